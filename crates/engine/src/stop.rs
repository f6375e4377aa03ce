//! Stopping a tree: every thread seized and held in its ptrace stop
//! (through the cgroup freezer when the tree is alone in a cgroup v2 of
//! its own), and put back as it was when the stop is over. The dump
//! ([`crate::dump`]) records a stopped tree; a rollback's handback
//! ([`crate::handoff`]) stops one to take its POSIX locks back inside
//! it; the cgroup freezer helpers serve both and the parked restore.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lpm_sys::ptrace::{self, Regs, Stop};
use lpm_sys::remote::park;

use crate::proc::{self, Stat};
use crate::{io_err, seccomp, zombie, EngineError, Result, StepExt};

/// A seized thread and the registers it had.
pub(crate) struct Seized {
    pub(crate) pid: i32,
    pub(crate) tid: i32,
    pub(crate) regs: Regs,
    pub(crate) sigmask: u64,
    /// The signal that stopped its process (a group stop: SIGSTOP,
    /// SIGTSTP, SIGTTIN, SIGTTOU), as its stop trap reported it; 0 when
    /// the process was running.
    pub(crate) stop_signal: i32,
}

/// All seized threads; on drop (error paths) every one is put back as it
/// was and detached.
pub(crate) struct Frozen {
    pub(crate) threads: Vec<Seized>,
    pub(crate) done: bool,
}

impl Frozen {
    /// Puts every thread's registers and signal mask back, each still
    /// stopped; returns the signal each is to receive at detach.
    pub(crate) fn put_back(&self) -> Vec<(i32, i32)> {
        self.threads
            .iter()
            .map(|s| {
                let sig = park(s.tid).unwrap_or(0);
                let _ = ptrace::set_regs(s.tid, &s.regs);
                let _ = ptrace::set_sigmask(s.tid, s.sigmask);
                (s.tid, sig)
            })
            .collect()
    }

    pub(crate) fn release(&mut self) {
        for (tid, sig) in self.put_back() {
            let _ = ptrace::detach(tid, sig);
        }
        self.done = true;
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if !self.done {
            self.release();
        }
    }
}

pub(crate) fn check_target(pid: i32) -> Result<()> {
    let bad = |why: &str| EngineError::BadTarget { pid, why: why.into() };
    let st = Stat::read(pid).map_err(|_| bad("no such process"))?;
    const PF_KTHREAD: u64 = 0x0020_0000;
    if st.num(9) & PF_KTHREAD != 0 {
        return Err(bad("is a kernel thread"));
    }
    let me = std::process::id() as i32;
    let mut p = me;
    while p > 1 {
        if p == pid {
            return Err(bad("is lpm itself or one of its ancestors"));
        }
        p = Stat::read(p).map(|s| s.num(4) as i32).unwrap_or(0);
    }
    Ok(())
}

/// Refuses thread `tid` of `pid` when another process traces it (a
/// debugger, strace): a thread has one tracer, and a restore would have to
/// make the tracer attach again and stop the thread exactly where it was
/// stopped for it, which nothing in the kernel offers.
pub(crate) fn check_untraced(pid: i32, tid: i32) -> Result<()> {
    let tracer = proc::Status::read_task(pid, tid)?.get("TracerPid").parse::<i32>().unwrap_or(0);
    if tracer == 0 || tracer == std::process::id() as i32 {
        return Ok(());
    }
    let comm = proc::read(tracer, "comm").map(|c| c.trim().to_string()).unwrap_or_else(|_| "?".into());
    Err(EngineError::Unsupported {
        pid,
        kind: "tracer",
        what: format!("thread {tid} is traced by pid {tracer} ({comm}): a restore cannot attach the tracer again"),
    })
}

/// Waits until a seized, interrupted thread reports its interrupt stop.
pub(crate) fn wait_interrupt_stop(pid: i32, tid: i32) -> Result<()> {
    if wait_stop_or_exit(tid)?.is_some() {
        Ok(())
    } else {
        Err(EngineError::BadTarget { pid, why: format!("thread {tid} exited during the freeze") })
    }
}

/// Waits until a seized, interrupted thread reports its interrupt stop
/// (with its signal: SIGTRAP, or the stop signal of a group stop in
/// effect) or its exit (None, reaped as our tracee).
fn wait_stop_or_exit(tid: i32) -> Result<Option<i32>> {
    // A thread exiting meanwhile answers ESRCH; its exit is waited for next.
    let gone_ok = |r: lpm_sys::Result<()>, what: &str| match r {
        Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
        r => r.step(tid, || what.into()),
    };
    loop {
        match ptrace::wait(tid).step(tid, || "wait for stop".into())?.1 {
            Stop::Event(ptrace::EVENT_STOP, sig) => return Ok(Some(sig)),
            // A signal arriving first takes the interrupt's place: hand the
            // signal back and ask again.
            Stop::Signal(sig) => {
                gone_ok(ptrace::cont(tid, sig), "re-deliver signal")?;
                gone_ok(ptrace::interrupt(tid), "interrupt")?;
            }
            Stop::Event(_, _) | Stop::Syscall => {
                gone_ok(ptrace::cont(tid, 0), "continue")?;
                gone_ok(ptrace::interrupt(tid), "interrupt")?;
            }
            Stop::Exited(_) | Stop::Killed(_) => return Ok(None),
        }
    }
}

/// Whether thread `tid` of `pid` has ended (exiting, a zombie, or gone).
fn task_ended(pid: i32, tid: i32) -> bool {
    match proc::read(pid, &format!("task/{tid}/stat")) {
        Ok(stat) => stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).is_none_or(|st| matches!(st, "Z" | "X" | "x")),
        Err(_) => true,
    }
}

/// Whether `pid` is still there (a zombie counts).
fn exists(pid: i32) -> bool {
    Stat::read(pid).is_ok()
}

/// The processes of the tree, parents before children, breadth first,
/// each one's children in the order they were forked: the image keeps
/// this order, and the restore's plan of pages shared since a fork
/// (`cow::plan`) orders children forked within one clock tick by it. A
/// process that ends while it is listed is left out (its zombie, if its
/// parent keeps one, shows at the next listing): the tree may be running
/// (an inspection) or stopping (a freeze, while its tasks still end).
pub(crate) fn list_tree(root: i32) -> Result<Vec<i32>> {
    let mut queue = std::collections::VecDeque::from([root]);
    let mut procs = Vec::new();
    while let Some(pid) = queue.pop_front() {
        match proc::children(pid) {
            Ok(kids) => queue.extend(kids),
            Err(_) if pid != root && !exists(pid) => continue,
            Err(e) => return Err(e),
        }
        procs.push(pid);
    }
    Ok(procs)
}

/// The cgroup v2 directory of `pid`, unless it is the root cgroup or
/// lpm's own (whose freezer would stop more than the tree).
fn cgroup_of(pid: i32) -> Result<Option<PathBuf>> {
    let Some(mount) = lpm_sys::probe::cgroup2_from_mountinfo(&proc::read(std::process::id() as i32, "mountinfo")?) else {
        return Ok(None);
    };
    let v2 = |pid: i32| -> Result<Option<String>> {
        Ok(proc::read(pid, "cgroup")?.lines().find_map(|l| l.strip_prefix("0::").map(String::from)))
    };
    let Some(path) = v2(pid)? else { return Ok(None) };
    if path == "/" || Some(&path) == v2(std::process::id() as i32)?.as_ref() {
        return Ok(None);
    }
    Ok(Some(mount.join(path.trim_start_matches('/'))))
}

/// The tree's cgroup v2 directory, when the tree is alone in a cgroup of
/// its own (not lpm's): then the cgroup freezer stops it atomically, with
/// no race against forks.
///
/// The tree runs while this is asked, and forks: a member of the cgroup
/// that the listing `procs` missed counts as the tree's when its parents
/// lead to `root` (a child born since), and a process of the listing that
/// is no member counts only if it is still alive (a zombie has left its
/// cgroup already, one reaped is gone).
pub(crate) fn own_cgroup(root: i32, procs: &[i32]) -> Result<Option<PathBuf>> {
    let Some(dir) = cgroup_of(root)? else { return Ok(None) };
    let members = std::fs::read_to_string(dir.join("cgroup.procs")).map_err(io_err(format!("read {}/cgroup.procs", dir.display())))?;
    let members: std::collections::HashSet<i32> = members.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let descends = |mut p: i32| {
        // Ends at pid 1 or 0, or at a process gone meanwhile (an orphan
        // of the tree is reparented inside it: the root is its pid 1).
        for _ in 0..4096 {
            if p == root {
                return true;
            }
            match Stat::read(p) {
                Ok(s) if p > 1 => p = s.num(4) as i32,
                _ => return false,
            }
        }
        false
    };
    // A process inside exit(2) leaves cgroup.procs before it is a zombie:
    // ended, as a zombie is.
    let alive = |p: i32| Stat::read(p).is_ok_and(|s| !s.ended());
    let alone = members.iter().all(|&m| procs.contains(&m) || descends(m) || !exists(m))
        && procs.iter().all(|&p| members.contains(&p) || !alive(p));
    Ok(alone.then_some(dir))
}

/// The refusal of [`After::Frozen`] for a tree that is not alone in a
/// cgroup v2 of its own: no other freezer can hold it.
pub(crate) fn not_freezable(root: i32) -> EngineError {
    EngineError::BadTarget { pid: root, why: "cannot be left frozen: the tree is not alone in a cgroup v2 of its own".into() }
}

/// Sets cgroup.freeze and waits for cgroup.events to agree.
pub(crate) fn cgroup_freeze(dir: &Path, on: bool) -> Result<()> {
    let f = dir.join("cgroup.freeze");
    std::fs::write(&f, if on { "1" } else { "0" }).map_err(io_err(format!("write {}", f.display())))?;
    if !on {
        return Ok(());
    }
    let ev = dir.join("cgroup.events");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = std::fs::read_to_string(&ev).map_err(io_err(format!("read {}", ev.display())))?;
        if s.lines().any(|l| l == "frozen 1") {
            return Ok(());
        }
        if Instant::now() > deadline {
            let _ = std::fs::write(&f, "0");
            return Err(EngineError::BadTarget { pid: 0, why: format!("cgroup {} did not freeze within 5 s", dir.display()) });
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Seizes and stops every thread of the tree.
///
/// A tree alone in its cgroup is frozen by the cgroup freezer first: every
/// thread is seized and interrupted while frozen, then the cgroup is thawed
/// and each thread traps into its ptrace stop before it can run. Otherwise
/// threads are seized one by one, re-listing until no new task appears (a
/// task may fork or spawn a thread while we attach).
///
/// Tasks end meanwhile: a program that does work starts and joins threads
/// and forks children that exit, and the freezer does not hold a task that
/// is exiting. A thread gone before it is seized is skipped; one that
/// exits once seized is reaped as our tracee and left out. A process whose
/// every thread ended is then a zombie of its (stopped) parent, recorded
/// as one (checked as the listing checks zombies), or gone.
fn freeze(root: i32) -> Result<(Frozen, Vec<i32>, Option<PathBuf>)> {
    let mut frozen = Frozen { threads: Vec::new(), done: false };
    let mut known: HashMap<i32, ()> = HashMap::new();
    let mut order = Vec::new();
    let cgroup = own_cgroup(root, &list_tree(root)?)?;
    if let Some(cg) = &cgroup {
        cgroup_freeze(cg, true)?;
    }
    let mut pending = Vec::new();
    let mut ended = Vec::new();
    // Each thread's stop trap signal.
    let mut stops: HashMap<i32, i32> = HashMap::new();
    let res = (|| -> Result<()> {
        loop {
            let mut new = 0;
            for pid in list_tree(root)? {
                // A zombie cannot be seized: it is recorded from /proc.
                let zombie = match zombie::check(pid, root) {
                    Err(_) if pid != root && !exists(pid) => continue,
                    z => z?,
                };
                if zombie {
                    if !order.contains(&pid) {
                        order.push(pid);
                    }
                    continue;
                }
                let tids = match proc::threads(pid) {
                    Ok(t) => t,
                    Err(_) if pid != root && !exists(pid) => continue,
                    Err(e) => return Err(e),
                };
                for tid in tids {
                    if known.insert(tid, ()).is_some() {
                        continue;
                    }
                    new += 1;
                    // No fork or clone tracing: new tasks are found by the
                    // re-listing, and no event stop can swallow the interrupt.
                    // A thread under seccomp must not have our remote
                    // syscalls filtered.
                    let suspend = if seccomp::active(pid, tid) { lpm_sys::misc::PTRACE_O_SUSPEND_SECCOMP } else { 0 };
                    match ptrace::seize(tid, libc::PTRACE_O_TRACESYSGOOD | suspend) {
                        // Ended since it was listed: gone (ESRCH) or exiting
                        // (EPERM; a zombie shows at the next listing).
                        Err(e) if e.errno() == Some(libc::ESRCH) => continue,
                        Err(e) if e.errno() == Some(libc::EPERM) && task_ended(pid, tid) => continue,
                        Err(e) if e.errno() == Some(libc::EPERM) => {
                            check_untraced(pid, tid)?;
                            return Err(e).step(tid, || "seize".into());
                        }
                        r => r.step(tid, || "seize".into())?,
                    }
                    // Ours now: an exit from here on is reported to us.
                    pending.push((pid, tid));
                    match ptrace::interrupt(tid) {
                        Err(e) if e.errno() == Some(libc::ESRCH) => {}
                        r => r.step(tid, || "interrupt".into())?,
                    }
                    if cgroup.is_none() {
                        match wait_stop_or_exit(tid)? {
                            Some(sig) => {
                                stops.insert(tid, sig);
                            }
                            None => ended.push(tid),
                        }
                    }
                }
                if !order.contains(&pid) {
                    order.push(pid);
                }
            }
            if new == 0 || cgroup.is_some() {
                return Ok(());
            }
        }
    })();
    if let Some(cg) = &cgroup {
        cgroup_freeze(cg, false)?;
    }
    // Every seized thread is waited for, even after an error, so that the
    // release below finds it stopped and can put it back.
    let mut err = res.err();
    for (pid, tid) in pending {
        if ended.contains(&tid) {
            continue;
        }
        if cgroup.is_some() {
            match wait_stop_or_exit(tid) {
                Ok(Some(sig)) => {
                    stops.insert(tid, sig);
                }
                Ok(None) => {
                    ended.push(tid);
                    continue;
                }
                Err(e) => {
                    err.get_or_insert(e);
                    continue;
                }
            }
        }
        let state =
            ptrace::get_regs(tid).and_then(|regs| Ok((regs, ptrace::get_sigmask(tid)?))).step(tid, || "read registers and sigmask".into());
        match state {
            Ok((regs, sigmask)) => {
                let stop_signal = stops.get(&tid).copied().filter(|&s| s != libc::SIGTRAP).unwrap_or(0);
                frozen.threads.push(Seized { pid, tid, regs, sigmask, stop_signal })
            }
            Err(e) => {
                err.get_or_insert(e);
            }
        }
    }
    if err.is_none() {
        // A process none of whose threads is held any more ended while it
        // was stopped: a zombie now (recorded from /proc, if the listing's
        // rules allow it), or gone.
        let held: std::collections::HashSet<i32> = frozen.threads.iter().map(|s| s.pid).collect();
        let mut kept = Vec::with_capacity(order.len());
        for pid in order {
            if held.contains(&pid) {
                kept.push(pid);
                continue;
            }
            match zombie::check(pid, root) {
                Ok(true) => kept.push(pid),
                Ok(false) => {
                    err = Some(EngineError::BadTarget { pid, why: "its threads ended during the freeze but it is no zombie".into() });
                    break;
                }
                Err(_) if pid != root && !exists(pid) => {}
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        order = kept;
        if !ended.is_empty() {
            tracing::debug!(root, ended = ?ended, "tasks ended while the tree was stopped");
        }
    }
    match err {
        Some(e) => Err(e),
        None => Ok((frozen, order, cgroup)),
    }
}

/// Finds a `syscall` instruction (0f 05) to run remote syscalls from: in
/// the task's vDSO, or, in a task that unmapped its vDSO, in the first
/// executable area that is not writable (its program's or a library's
/// text) holding those two bytes. Where they sit in the instruction stream
/// does not matter: only they are run, from a stop, to a stop.
pub(crate) fn syscall_ip(pid: i32, maps: &[proc::MapEntry]) -> Result<u64> {
    /// Most of an area's text read to look for the two bytes.
    const MAX_SCAN: u64 = 16 << 20;
    let find = |e: &proc::MapEntry| -> Result<Option<u64>> {
        let mut b = vec![0u8; (e.end - e.start).min(MAX_SCAN) as usize];
        lpm_sys::ptrace::read_mem(pid, e.start, &mut b).step(pid, || format!("read {:#x}-{:#x} {}", e.start, e.end, e.path))?;
        Ok(b.windows(2).position(|w| w == [0x0f, 0x05]).map(|i| e.start + i as u64))
    };
    if let Some(v) = maps.iter().find(|e| e.path == "[vdso]") {
        return find(v)?.ok_or_else(|| EngineError::Unsupported {
            pid,
            kind: "memory layout",
            what: "no syscall instruction in [vdso]".into(),
        });
    }
    let text = maps.iter().filter(|e| {
        let p = e.perms.as_bytes();
        p.get(2) == Some(&b'x') && p.get(1) != Some(&b'w') && p.first() == Some(&b'r') && !e.path.starts_with('[')
    });
    for e in text {
        if let Some(ip) = find(e)? {
            return Ok(ip);
        }
    }
    Err(EngineError::Unsupported {
        pid,
        kind: "memory layout",
        what: "no [vdso] and no syscall instruction in any read-only executable area to run syscalls from".into(),
    })
}

/// A tree whose every thread is seized and stopped under ptrace, by the
/// thread that called [`stop_tree`] (ptrace is per thread: use it, dump
/// it and drop it there). Nothing in the tree runs, and no page changes,
/// until it is dumped or dropped; dropping it puts every thread back as
/// it was and lets the tree continue.
pub struct StoppedTree {
    pub(crate) root: i32,
    pub(crate) frozen: Frozen,
    pub(crate) order: Vec<i32>,
    pub(crate) cgroup: Option<PathBuf>,
    pub(crate) started: Instant,
    pub(crate) stopped_at: Instant,
    /// ptrace requests must come from the tracing thread.
    _not_send: std::marker::PhantomData<*const ()>,
}

/// Stops the tree rooted at `root` for a checkpoint: through its cgroup's
/// freezer when it is alone in a cgroup v2 of its own (atomic, no race
/// with forks), else thread by thread. The freezer only bridges the
/// seizing: once every thread sits in its ptrace stop the cgroup is
/// thawed, also when the caller had frozen it before.
pub fn stop_tree(root: i32) -> Result<StoppedTree> {
    let started = Instant::now();
    check_target(root)?;
    let (frozen, order, cgroup) = freeze(root)?;
    tracing::debug!(root, threads = frozen.threads.len(), elapsed_ms = started.elapsed().as_secs_f64() * 1e3, "tree frozen");
    Ok(StoppedTree { root, frozen, order, cgroup, started, stopped_at: Instant::now(), _not_send: std::marker::PhantomData })
}

impl StoppedTree {
    /// Host pid of the root.
    pub fn root(&self) -> i32 {
        self.root
    }

    /// Host pids of the tree's processes, parents before children.
    pub fn pids(&self) -> &[i32] {
        &self.order
    }

    /// The tree's own cgroup v2 directory, when it was stopped through its
    /// freezer (required by [`crate::After::Frozen`]).
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }

    /// Lets the tree continue, exactly as dropping it does.
    pub fn resume(self) {}

    /// Each process's leader thread and the registers it had at the stop.
    pub(crate) fn leaders(&self) -> HashMap<i32, Regs> {
        self.frozen.threads.iter().filter(|s| s.tid == s.pid).map(|s| (s.pid, s.regs)).collect()
    }
}

impl std::fmt::Debug for StoppedTree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoppedTree")
            .field("root", &self.root)
            .field("pids", &self.order)
            .field("threads", &self.frozen.threads.len())
            .field("cgroup", &self.cgroup)
            .finish()
    }
}

/// The cgroup v2 directory a tree left by [`After::Frozen`] is frozen in.
pub(crate) fn frozen_cgroup(root: i32) -> Result<PathBuf> {
    cgroup_of(root)?.ok_or_else(|| EngineError::BadTarget { pid: root, why: "is not in a cgroup v2 of its own".into() })
}

/// Ends a tree left by [`crate::After::Frozen`] (the commit of a migration's
/// handover): SIGKILL to every process of the tree, then the cgroup is
/// thawed so that they die. Reaping the root is its parent's business
/// (the caller's, for a partition's init).
pub fn kill_frozen_tree(root: i32) -> Result<()> {
    let cg = frozen_cgroup(root)?;
    for pid in list_tree(root)? {
        lpm_sys::misc::kill(pid, libc::SIGKILL);
    }
    cgroup_freeze(&cg, false)
}
