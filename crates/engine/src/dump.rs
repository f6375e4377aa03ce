//! Checkpoint: stop a tree, record it, then kill it, let it go on, or leave
//! it frozen.
//!
//! Order matters for "nothing is harmed": every task is seized and stopped
//! first, everything is read and written to the image while they are
//! stopped, and only once the image is complete and synced are the tasks
//! killed. Any failure before that puts every register back and detaches,
//! so the tree continues as if nothing happened.
//!
//! A live migration splits the checkpoint in two ([`stop_tree`], then
//! [`StoppedTree::dump`]): between them the tree is stopped, so the caller
//! can take the last dirty-page report
//! ([`crate::DirtyTracker::collect_last`]), send those pages, and name the
//! pages the receiver already holds
//! ([`DumpOptions::precopied`]). [`After::Frozen`] then hands the tree to
//! its cgroup freezer, ptrace-free, for the two-phase handover, after
//! letting go of what the target must take (file locks, FIFO buffers:
//! [`crate::Handoff`]): the source later gives that back and thaws the
//! tree ([`crate::thaw_tree`], rollback) or destroys it
//! ([`kill_frozen_tree`], commit).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lpm_image::{Process, TreeImage};
use lpm_sys::ptrace::{self, Regs, Stop};
use lpm_sys::remote::{park, Remote};

use crate::files::FileTable;
use crate::handoff::{self, Handoff};
use crate::mem::ShmemTable;
use crate::proc::{self, Stat, Status};
use crate::task::Scratch;
use crate::{cpu, files, io_err, ipc, locks, mem, ns, seccomp, task, timers, zombie, EngineError, Result, StepExt};

/// How to checkpoint, as `lpm checkpoint` asks; [`DumpOptions`] has
/// everything (this is its subset, kept so its users need not change).
#[derive(Clone, Debug, Default)]
pub struct CheckpointOptions {
    /// Let the tree continue after the dump instead of killing it
    /// ([`After::Run`]; else [`After::Kill`]).
    pub leave_running: bool,
    /// The caller has locked the network (no packet reaches or leaves the
    /// tree): established TCP connections to peers outside the tree are
    /// dumped instead of refused.
    pub tcp_established: bool,
}

/// What becomes of the tree once its images are complete and synced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum After {
    /// Killed (and reaped of its ptrace stops): the image is its only copy.
    #[default]
    Kill,
    /// Put back as it was and detached: it continues.
    Run,
    /// Held by its cgroup v2 freezer with no tracer left, so that the
    /// image can be restored elsewhere while this copy waits for the
    /// verdict: [`crate::thaw_tree`] lets it continue, [`kill_frozen_tree`]
    /// ends it. Its file locks are let go of and its FIFOs emptied first,
    /// for the target to take ([`CheckpointStats::handoff`] holds them for
    /// the thaw). Refused (before anything is harmed) for a tree that is
    /// not alone in a cgroup v2 of its own, as no other freezer can hold
    /// it.
    Frozen,
}

/// Every checkpoint option.
#[derive(Clone, Debug, Default)]
pub struct DumpOptions {
    /// What becomes of the tree afterwards.
    pub after: After,
    /// As [`CheckpointOptions::tcp_established`].
    pub tcp_established: bool,
    /// Per process (host pid), page ranges `[start, end)` whose current
    /// content the receiver of a live migration already holds, in its
    /// precopy file for that process (`precopy-PID.pages`, the page of
    /// address A at offset A). Present anonymous pages inside them are
    /// recorded as precopied runs and not saved; zero and absent pages are
    /// handled as always. Ranges need not be sorted or merged; partial
    /// pages at their edges are not counted as held.
    ///
    /// Correct only if nothing wrote those pages since they were sent:
    /// take the tracker's last report while the tree is stopped (between
    /// [`stop_tree`] and [`StoppedTree::dump`]) and leave its pages out.
    pub precopied: HashMap<i32, Vec<(u64, u64)>>,
    /// The root's network namespace is the caller's (a partition's, with
    /// its NIC, which the host recreates on the target): interfaces other
    /// than lo in it are not refused, and the image requires the restore
    /// to be given a namespace ([`crate::RestoreOptions::netns`]).
    pub external_netns: bool,
    /// Per process (host pid), its /proc/PID/smaps as read shortly before
    /// the stop ([`crate::proc::smaps`]), for the VmFlags of its areas. Used
    /// when /proc/PID/maps still lists exactly the same areas, which spares
    /// the stopped tree the page-table walk of smaps (tens of milliseconds
    /// on a big process). The one thing it can miss is an madvise that
    /// changed a whole area's flags in between.
    pub smaps_hint: HashMap<i32, Vec<proc::MapEntry>>,
}

impl From<&CheckpointOptions> for DumpOptions {
    fn from(o: &CheckpointOptions) -> DumpOptions {
        DumpOptions {
            after: if o.leave_running { After::Run } else { After::Kill },
            tcp_established: o.tcp_established,
            ..Default::default()
        }
    }
}

/// What a checkpoint did.
#[derive(Debug, Default)]
pub struct CheckpointStats {
    /// Processes dumped.
    pub processes: usize,
    /// Threads dumped.
    pub threads: usize,
    /// Pages saved with data.
    pub pages: u64,
    /// Zero pages recorded without data.
    pub zero_pages: u64,
    /// Pages recorded as precopied: the receiver holds them, nothing was
    /// read or written for them.
    pub precopied_pages: u64,
    /// Time the tree was stopped.
    pub frozen: Duration,
    /// Time from the start until the images were complete and synced.
    pub images: Duration,
    /// The tree was stopped through its cgroup's freezer (else by ptrace
    /// alone).
    pub cgroup_frozen: bool,
    /// Total time.
    pub total: Duration,
    /// What an [`After::Frozen`] dump let go of (locks, FIFO data), for
    /// [`crate::thaw_tree`] to give back on rollback; empty otherwise.
    pub handoff: Handoff,
}

/// A seized thread and the registers it had.
struct Seized {
    pid: i32,
    tid: i32,
    regs: Regs,
    sigmask: u64,
}

/// All seized threads; on drop (error paths) every one is put back as it
/// was and detached.
struct Frozen {
    threads: Vec<Seized>,
    done: bool,
}

impl Frozen {
    /// Puts every thread's registers and signal mask back, each still
    /// stopped; returns the signal each is to receive at detach.
    fn put_back(&self) -> Vec<(i32, i32)> {
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

    fn release(&mut self) {
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

/// Waits until a seized, interrupted thread reports its interrupt stop.
pub(crate) fn wait_interrupt_stop(pid: i32, tid: i32) -> Result<()> {
    if wait_stop_or_exit(tid)? {
        Ok(())
    } else {
        Err(EngineError::BadTarget { pid, why: format!("thread {tid} exited during the freeze") })
    }
}

/// Waits until a seized, interrupted thread reports its interrupt stop
/// (true) or its exit (false, reaped as our tracee).
fn wait_stop_or_exit(tid: i32) -> Result<bool> {
    // A thread exiting meanwhile answers ESRCH; its exit is waited for next.
    let gone_ok = |r: lpm_sys::Result<()>, what: &str| match r {
        Err(e) if e.errno() == Some(libc::ESRCH) => Ok(()),
        r => r.step(tid, || what.into()),
    };
    loop {
        match ptrace::wait(tid).step(tid, || "wait for stop".into())?.1 {
            Stop::Event(ptrace::EVENT_STOP, _) => return Ok(true),
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
            Stop::Exited(_) | Stop::Killed(_) => return Ok(false),
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

/// The processes of the tree, parents before children. A process that
/// ends while it is listed is left out (its zombie, if its parent keeps
/// one, shows at the next listing): the tree may be running (an
/// inspection) or stopping (a freeze, while its tasks still end).
pub(crate) fn list_tree(root: i32) -> Result<Vec<i32>> {
    let mut queue = vec![root];
    let mut procs = Vec::new();
    while let Some(pid) = queue.pop() {
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
    let alone = members.iter().all(|&m| procs.contains(&m) || descends(m) || !exists(m))
        && procs.iter().all(|&p| members.contains(&p) || !Stat::read(p).is_ok_and(|s| s.state() != 'Z'));
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
                        r => r.step(tid, || "seize".into())?,
                    }
                    // Ours now: an exit from here on is reported to us.
                    pending.push((pid, tid));
                    match ptrace::interrupt(tid) {
                        Err(e) if e.errno() == Some(libc::ESRCH) => {}
                        r => r.step(tid, || "interrupt".into())?,
                    }
                    if cgroup.is_none() && !wait_stop_or_exit(tid)? {
                        ended.push(tid);
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
                Ok(true) => {}
                Ok(false) => {
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
            Ok((regs, sigmask)) => frozen.threads.push(Seized { pid, tid, regs, sigmask }),
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

/// Finds a `syscall` instruction in the task's vDSO.
pub(crate) fn syscall_ip(pid: i32, maps: &[proc::MapEntry]) -> Result<u64> {
    let v = maps.iter().find(|e| e.path == "[vdso]").ok_or_else(|| EngineError::Unsupported {
        pid,
        kind: "memory layout",
        what: "no [vdso] to run syscalls from".into(),
    })?;
    let mut b = vec![0u8; (v.end - v.start) as usize];
    lpm_sys::ptrace::read_mem(pid, v.start, &mut b).step(pid, || "read vdso".into())?;
    b.windows(2).position(|w| w == [0x0f, 0x05]).map(|i| v.start + i as u64).ok_or_else(|| EngineError::Unsupported {
        pid,
        kind: "memory layout",
        what: "no syscall instruction in [vdso]".into(),
    })
}

/// Checkpoints the tree rooted at `root` into `dir` (`lpm checkpoint`).
pub fn checkpoint(root: i32, dir: &Path, opts: &CheckpointOptions) -> Result<CheckpointStats> {
    checkpoint_with(root, dir, &opts.into())
}

/// Checkpoints the tree rooted at `root` into `dir` with every option:
/// [`stop_tree`] then [`StoppedTree::dump`].
pub fn checkpoint_with(root: i32, dir: &Path, opts: &DumpOptions) -> Result<CheckpointStats> {
    stop_tree(root)?.dump(dir, opts)
}

/// A tree whose every thread is seized and stopped under ptrace, by the
/// thread that called [`stop_tree`] (ptrace is per thread: use it, dump
/// it and drop it there). Nothing in the tree runs, and no page changes,
/// until it is dumped or dropped; dropping it puts every thread back as
/// it was and lets the tree continue.
pub struct StoppedTree {
    root: i32,
    frozen: Frozen,
    order: Vec<i32>,
    cgroup: Option<PathBuf>,
    started: Instant,
    stopped_at: Instant,
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
    /// freezer (required by [`After::Frozen`]).
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }

    /// Lets the tree continue, exactly as dropping it does.
    pub fn resume(self) {}

    /// Each process's leader thread and the registers it had at the stop.
    pub(crate) fn leaders(&self) -> HashMap<i32, Regs> {
        self.frozen.threads.iter().filter(|s| s.tid == s.pid).map(|s| (s.pid, s.regs)).collect()
    }

    /// Writes the tree's images into `dir`, then does with the tree what
    /// `opts.after` says. On error the tree continues as it was.
    pub fn dump(mut self, dir: &Path, opts: &DumpOptions) -> Result<CheckpointStats> {
        let root = self.root;
        if opts.after == After::Frozen && self.cgroup.is_none() {
            return Err(not_freezable(root));
        }
        std::fs::create_dir_all(dir).map_err(io_err(format!("create image directory {}", dir.display())))?;
        let precopied: HashMap<i32, Vec<(u64, u64)>> = opts.precopied.iter().map(|(&pid, r)| (pid, page_ranges(r))).collect();
        let mut tree = TreeImage {
            writer: format!("lpm {}", env!("CARGO_PKG_VERSION")),
            created_unix_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            ..Default::default()
        };
        let mut files = FileTable::default();
        files.tree = self.order.clone();
        files.tcp_established = opts.tcp_established;
        let mut shm = ShmemTable::default();
        for &pid in &self.order {
            let held = precopied.get(&pid).map(Vec::as_slice).unwrap_or(&[]);
            let maps = areas(pid, opts.smaps_hint.get(&pid))?;
            let p = dump_process(pid, &self.frozen, &self.order, dir, &mut files, &mut shm, held, opts.external_netns, maps)?;
            tree.processes.push(p);
        }
        files::reconcile_connections(&mut files)?;
        let first = self.frozen.threads.first().map(|s| s.tid).unwrap_or(root);
        tree.cpu = Some(cpu::host(&ptrace::get_xstate(first).step(first, || "read xstate".into())?));
        tree.root_pid = root as u32;
        tree.files = files.files;
        tree.pipes = files.pipes.into_values().collect();
        tree.shmems = shm.saved.into_values().collect();
        lpm_image::write_tree(dir, &tree)?;
        tracing::debug!(root, elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3, "images written");
        // The image is complete: what the target must take is let go of
        // while every thread is still seized (taken back on any error).
        let mut handoff = if opts.after == After::Frozen { handoff::release(&tree, &self.leaders())? } else { Handoff::default() };
        let mut stats = CheckpointStats {
            processes: tree.processes.len(),
            threads: self.frozen.threads.len(),
            images: self.started.elapsed(),
            cgroup_frozen: self.cgroup.is_some(),
            ..Default::default()
        };
        for m in tree.processes.iter().filter_map(|p| p.mm.as_ref()).map(|m| &m.pages).chain(tree.shmems.iter().map(|s| &s.pages)) {
            for r in m {
                if r.zero {
                    stats.zero_pages += r.npages
                } else if r.precopied {
                    stats.precopied_pages += r.npages
                } else {
                    stats.pages += r.npages
                }
            }
        }
        match opts.after {
            After::Run => self.frozen.release(),
            After::Frozen => self.hand_to_freezer(&mut handoff)?,
            After::Kill => self.kill(),
        }
        stats.frozen = self.stopped_at.elapsed();
        stats.total = self.started.elapsed();
        stats.handoff = handoff;
        Ok(stats)
    }

    /// Kills every process and collects the ptrace stops of its threads.
    fn kill(&mut self) {
        for &pid in &self.order {
            lpm_sys::misc::kill(pid, libc::SIGKILL);
        }
        // A traced thread that dies stays a zombie until its tracer waits
        // for it, and its process cannot be reaped before: collect the
        // non-leaders, then the leaders' exit notifications.
        let mut left: Vec<i32> = self.frozen.threads.iter().map(|s| s.tid).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !left.is_empty() && Instant::now() < deadline {
            left.retain(|&tid| !ptrace::try_reap(tid));
            if !left.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.frozen.done = true;
    }

    /// Leaves the tree to its cgroup freezer without a tracer: registers
    /// and masks go back while every thread is still in its ptrace stop
    /// (which the freezer counts as frozen), the cgroup is frozen, and
    /// only then are the threads detached: each leaves its ptrace stop
    /// straight into the freezer's trap, before reaching user space. On
    /// error the tree continues, with `handoff` given back first.
    fn hand_to_freezer(&mut self, handoff: &mut Handoff) -> Result<()> {
        let cg = self.cgroup.clone().expect("checked before the dump");
        let mut sigs = self.frozen.put_back();
        if let Err(e) = cgroup_freeze(&cg, true) {
            // Still stopped by ptrace: what was let go of comes back (remote
            // calls, then the registers once more), and detaching lets the
            // tree continue.
            if !handoff.is_empty() {
                handoff::give_back_seized(self.root, handoff, &self.leaders());
                for ((_, sig), (_, again)) in sigs.iter_mut().zip(self.frozen.put_back()) {
                    if *sig == 0 {
                        *sig = again;
                    }
                }
            }
            for (tid, sig) in sigs {
                let _ = ptrace::detach(tid, sig);
            }
            self.frozen.done = true;
            return Err(e);
        }
        let mut err = None;
        for (tid, sig) in sigs {
            if let Err(e) = ptrace::detach(tid, sig).step(tid, || "detach into the cgroup freezer".into()) {
                err.get_or_insert(e);
            }
        }
        self.frozen.done = true;
        if let Some(e) = err {
            // Some threads are detached into the freezer: the thaw gives
            // back what was let go of before the tree runs.
            let h = std::mem::take(handoff);
            if let Err(back) = handoff::thaw_tree(self.root, h, Duration::ZERO) {
                tracing::error!(root = self.root, error = %back, "thaw after a failed hand-over to the freezer");
            }
            return Err(e);
        }
        // The detached threads pass through the freezer's accounting once
        // more on their way into its trap.
        cgroup_freeze(&cg, true)
    }
}

/// Page-aligned, sorted, merged ranges: only whole pages count as held.
fn page_ranges(ranges: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = ranges
        .iter()
        .map(|&(s, e)| (s.div_ceil(crate::PAGE) * crate::PAGE, e / crate::PAGE * crate::PAGE))
        .filter(|(s, e)| s < e)
        .collect();
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

/// The cgroup v2 directory a tree left by [`After::Frozen`] is frozen in.
pub(crate) fn frozen_cgroup(root: i32) -> Result<PathBuf> {
    cgroup_of(root)?.ok_or_else(|| EngineError::BadTarget { pid: root, why: "is not in a cgroup v2 of its own".into() })
}

/// Ends a tree left by [`After::Frozen`] (the commit of a migration's
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

/// The areas of `pid` with their VmFlags: from the hint when maps shows
/// the very same areas, else from smaps.
fn areas(pid: i32, hint: Option<&Vec<proc::MapEntry>>) -> Result<Vec<proc::MapEntry>> {
    if let Some(h) = hint {
        let now = proc::maps(pid)?;
        let same = |a: &proc::MapEntry, b: &proc::MapEntry| {
            (a.start, a.end, &a.perms, a.offset, a.major, a.minor, a.inode, &a.path)
                == (b.start, b.end, &b.perms, b.offset, b.major, b.minor, b.inode, &b.path)
        };
        if now.len() == h.len() && now.iter().zip(h).all(|(a, b)| same(a, b)) {
            return Ok(h.clone());
        }
    }
    proc::smaps(pid)
}

#[allow(clippy::too_many_arguments)]
fn dump_process(
    pid: i32,
    frozen: &Frozen,
    tree: &[i32],
    dir: &Path,
    files: &mut FileTable,
    shm: &mut ShmemTable,
    precopied: &[(u64, u64)],
    external_netns: bool,
    maps: Vec<proc::MapEntry>,
) -> Result<Process> {
    if Stat::read(pid)?.state() == 'Z' {
        return zombie::dump(pid, tree);
    }
    let begun = Instant::now();
    let st = Status::read(pid)?;
    let stat = Stat::read(pid)?;
    let threads: Vec<&Seized> = frozen.threads.iter().filter(|s| s.pid == pid).collect();
    let leader = threads
        .iter()
        .find(|s| s.tid == pid)
        .ok_or_else(|| EngineError::BadTarget { pid, why: "thread-group leader has exited".into() })?;
    let ip = syscall_ip(pid, &maps)?;
    let ppid = stat.num(4) as i32;
    let in_tree = tree.contains(&ppid);
    let mut p = Process {
        pid: pid as u32,
        ppid: if in_tree { ppid as u32 } else { 0 },
        pgid: stat.num(5) as u32,
        sid: stat.num(6) as u32,
        host_pid: pid as u32,
        nspid: st.nums("NSpid"),
        namespaces: ns::dump(pid, if in_tree { ppid } else { std::process::id() as i32 }, external_netns && !in_tree)?,
        ..Default::default()
    };
    if let Some(n) = p.namespaces.as_mut() {
        ipc::dump_ns(pid, n, dir)?;
    }
    p.seccomp = seccomp::dump(pid, &threads.iter().map(|t| t.tid).collect::<Vec<_>>())?;
    p.fds = files::dump(pid, files)?;
    let regs: Vec<(i32, Regs)> = threads.iter().map(|t| (t.tid, t.regs)).collect();
    p.file_locks = locks::dump(pid, &p.fds, &regs)?;
    p.sysv_shm_maps = ipc::dump_maps(pid, &maps)?;
    let t = Instant::now();
    p.mm = Some(mem::dump(pid, &maps, dir, shm, precopied)?);
    tracing::debug!(pid, state_ms = (t - begun).as_secs_f64() * 1e3, elapsed_ms = t.elapsed().as_secs_f64() * 1e3, "memory dumped");
    // Remote calls run with every signal blocked, so none is delivered (or
    // lost) while we borrow the threads; the masks are put back on release.
    for s in &threads {
        ptrace::set_sigmask(s.tid, !0).step(s.tid, || "block signals".into())?;
    }
    let mut lr = Remote::new(pid, ip, leader.regs);
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let addr = lr.call(libc::SYS_mmap, &[0, 4096, prot, flags, u64::MAX, 0]).step(pid, || "remote mmap scratch".into())?;
    let s = Scratch { addr, len: 4096 };
    let res = (|| -> Result<()> {
        task::dump_process(pid, &mut lr, s, &mut p)?;
        lr.call(libc::SYS_brk, &[0]).step(pid, || "remote brk".into()).map(|brk| {
            if let Some(l) = p.mm.as_mut().and_then(|m| m.layout.as_mut()) {
                l.brk = brk;
            }
        })?;
        for t in &threads {
            // Saved as they were at the interrupt stop: the restore puts
            // them back at such a stop, where the kernel completes an
            // interrupted syscall itself.
            let mut r = Remote::new(t.tid, ip, t.regs);
            let mut th = task::dump_thread(pid, t.tid, t.tid as u32, &t.regs, &mut r, s)?;
            th.nstid = Status::read_task(pid, t.tid)?.nums("NSpid");
            th.sigmask = t.sigmask;
            p.threads.push(th);
        }
        timers::dump(pid, &mut lr, s, &mut p)?;
        Ok(())
    })();
    lr.call(libc::SYS_munmap, &[addr, 4096]).step(pid, || "remote munmap scratch".into())?;
    res?;
    tracing::debug!(pid, elapsed_ms = begun.elapsed().as_secs_f64() * 1e3, "process dumped");
    Ok(p)
}
