//! Checkpoint: stop a tree, record it, then kill it or let it go on.
//!
//! Order matters for "nothing is harmed": every task is seized and stopped
//! first, everything is read and written to the image while they are
//! stopped, and only once the image is complete and synced are the tasks
//! killed. Any failure before that puts every register back and detaches,
//! so the tree continues as if nothing happened.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lpm_image::{Process, TreeImage};
use lpm_sys::ptrace::{self, Regs, Stop};
use lpm_sys::remote::{park, Remote};

use crate::files::FileTable;
use crate::mem::ShmemTable;
use crate::proc::{self, Stat, Status};
use crate::task::Scratch;
use crate::{cpu, files, io_err, ipc, locks, mem, ns, seccomp, task, timers, zombie, EngineError, Result, StepExt};

/// How to checkpoint.
#[derive(Clone, Debug, Default)]
pub struct CheckpointOptions {
    /// Let the tree continue after the dump instead of killing it.
    pub leave_running: bool,
    /// The caller has locked the network (no packet reaches or leaves the
    /// tree): established TCP connections to peers outside the tree are
    /// dumped instead of refused.
    pub tcp_established: bool,
}

/// What a checkpoint did.
#[derive(Clone, Debug, Default)]
pub struct CheckpointStats {
    /// Processes dumped.
    pub processes: usize,
    /// Threads dumped.
    pub threads: usize,
    /// Pages saved with data.
    pub pages: u64,
    /// Zero pages recorded without data.
    pub zero_pages: u64,
    /// Time the tree was stopped.
    pub frozen: Duration,
    /// Time from the start until the images were complete and synced.
    pub images: Duration,
    /// The tree was stopped through its cgroup's freezer (else by ptrace
    /// alone).
    pub cgroup_frozen: bool,
    /// Total time.
    pub total: Duration,
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
    fn release(&mut self) {
        for s in &self.threads {
            let sig = park(s.tid).unwrap_or(0);
            let _ = ptrace::set_regs(s.tid, &s.regs);
            let _ = ptrace::set_sigmask(s.tid, s.sigmask);
            let _ = ptrace::detach(s.tid, sig);
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

fn check_target(pid: i32) -> Result<()> {
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
    loop {
        match ptrace::wait(tid).step(tid, || "wait for stop".into())?.1 {
            Stop::Event(ptrace::EVENT_STOP, _) => return Ok(()),
            // A signal arriving first takes the interrupt's place: hand the
            // signal back and ask again.
            Stop::Signal(sig) => {
                ptrace::cont(tid, sig).step(tid, || "re-deliver signal".into())?;
                ptrace::interrupt(tid).step(tid, || "interrupt".into())?;
            }
            Stop::Event(_, _) | Stop::Syscall => {
                ptrace::cont(tid, 0).step(tid, || "continue".into())?;
                ptrace::interrupt(tid).step(tid, || "interrupt".into())?;
            }
            Stop::Exited(_) | Stop::Killed(_) => {
                return Err(EngineError::BadTarget { pid, why: format!("thread {tid} exited during the freeze") })
            }
        }
    }
}

/// The processes of the tree, parents before children.
fn list_tree(root: i32) -> Result<Vec<i32>> {
    let mut queue = vec![root];
    let mut procs = Vec::new();
    while let Some(pid) = queue.pop() {
        procs.push(pid);
        queue.extend(proc::children(pid)?);
    }
    Ok(procs)
}

/// The tree's cgroup v2 directory, when the tree is alone in a cgroup of
/// its own (not lpm's): then the cgroup freezer stops it atomically, with
/// no race against forks.
fn own_cgroup(root: i32, procs: &[i32]) -> Result<Option<std::path::PathBuf>> {
    let Some(mount) = lpm_sys::probe::cgroup2_from_mountinfo(&proc::read(std::process::id() as i32, "mountinfo")?) else {
        return Ok(None);
    };
    let v2 = |pid: i32| -> Result<Option<String>> {
        Ok(proc::read(pid, "cgroup")?.lines().find_map(|l| l.strip_prefix("0::").map(String::from)))
    };
    let Some(path) = v2(root)? else { return Ok(None) };
    if path == "/" || Some(&path) == v2(std::process::id() as i32)?.as_ref() {
        return Ok(None);
    }
    let dir = mount.join(path.trim_start_matches('/'));
    let members = std::fs::read_to_string(dir.join("cgroup.procs")).map_err(io_err(format!("read {}/cgroup.procs", dir.display())))?;
    let mut members: Vec<i32> = members.lines().filter_map(|l| l.trim().parse().ok()).collect();
    let mut mine = procs.to_vec();
    members.sort_unstable();
    mine.sort_unstable();
    Ok((members == mine).then_some(dir))
}

/// Sets cgroup.freeze and waits for cgroup.events to agree.
fn cgroup_freeze(dir: &Path, on: bool) -> Result<()> {
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
fn freeze(root: i32) -> Result<(Frozen, Vec<i32>, bool)> {
    let mut frozen = Frozen { threads: Vec::new(), done: false };
    let mut known: HashMap<i32, ()> = HashMap::new();
    let mut order = Vec::new();
    let cgroup = own_cgroup(root, &list_tree(root)?)?;
    if let Some(cg) = &cgroup {
        cgroup_freeze(cg, true)?;
    }
    let mut pending = Vec::new();
    let res = (|| -> Result<()> {
        loop {
            let mut new = 0;
            for pid in list_tree(root)? {
                // A zombie cannot be seized: it is recorded from /proc.
                if zombie::check(pid, root)? {
                    if !order.contains(&pid) {
                        order.push(pid);
                    }
                    continue;
                }
                for tid in proc::threads(pid)? {
                    if known.insert(tid, ()).is_some() {
                        continue;
                    }
                    new += 1;
                    // No fork or clone tracing: new tasks are found by the
                    // re-listing, and no event stop can swallow the interrupt.
                    // A thread under seccomp must not have our remote
                    // syscalls filtered.
                    let suspend = if seccomp::active(pid, tid) { lpm_sys::misc::PTRACE_O_SUSPEND_SECCOMP } else { 0 };
                    ptrace::seize(tid, libc::PTRACE_O_TRACESYSGOOD | suspend).step(tid, || "seize".into())?;
                    ptrace::interrupt(tid).step(tid, || "interrupt".into())?;
                    pending.push((pid, tid));
                    if cgroup.is_none() {
                        wait_interrupt_stop(pid, tid)?;
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
        if cgroup.is_some() {
            if let Err(e) = wait_interrupt_stop(pid, tid) {
                err.get_or_insert(e);
                continue;
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
    match err {
        Some(e) => Err(e),
        None => Ok((frozen, order, cgroup.is_some())),
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

/// Checkpoints the tree rooted at `root` into `dir`.
pub fn checkpoint(root: i32, dir: &Path, opts: &CheckpointOptions) -> Result<CheckpointStats> {
    let t0 = Instant::now();
    check_target(root)?;
    std::fs::create_dir_all(dir).map_err(io_err(format!("create image directory {}", dir.display())))?;
    let (mut frozen, order, cgroup_frozen) = freeze(root)?;
    tracing::debug!(root, threads = frozen.threads.len(), elapsed_ms = t0.elapsed().as_secs_f64() * 1e3, "tree frozen");
    let frozen_at = Instant::now();
    let mut tree = TreeImage {
        writer: format!("lpm {}", env!("CARGO_PKG_VERSION")),
        created_unix_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
        ..Default::default()
    };
    let mut files = FileTable::default();
    files.tree = order.clone();
    files.tcp_established = opts.tcp_established;
    let mut shm = ShmemTable::default();
    for &pid in &order {
        let p = dump_process(pid, &frozen, &order, dir, &mut files, &mut shm)?;
        tree.processes.push(p);
    }
    ns::place_mount_proc(&mut tree.processes);
    let first = frozen.threads.first().map(|s| s.tid).unwrap_or(root);
    tree.cpu = Some(cpu::host(&ptrace::get_xstate(first).step(first, || "read xstate".into())?));
    tree.root_pid = root as u32;
    tree.files = files.files;
    tree.pipes = files.pipes.into_values().collect();
    tree.shmems = shm.saved.into_values().collect();
    lpm_image::write_tree(dir, &tree)?;
    tracing::debug!(root, elapsed_ms = t0.elapsed().as_secs_f64() * 1e3, "images written");
    let mut stats = CheckpointStats {
        processes: tree.processes.len(),
        threads: frozen.threads.len(),
        images: t0.elapsed(),
        cgroup_frozen,
        ..Default::default()
    };
    for m in tree.processes.iter().filter_map(|p| p.mm.as_ref()).map(|m| &m.pages).chain(tree.shmems.iter().map(|s| &s.pages)) {
        for r in m {
            if r.zero {
                stats.zero_pages += r.npages
            } else {
                stats.pages += r.npages
            }
        }
    }
    if opts.leave_running {
        frozen.release();
    } else {
        for &pid in &order {
            lpm_sys::misc::kill(pid, libc::SIGKILL);
        }
        // A traced thread that dies stays a zombie until its tracer waits
        // for it, and its process cannot be reaped before: collect the
        // non-leaders, then the leaders' exit notifications.
        let mut left: Vec<i32> = frozen.threads.iter().map(|s| s.tid).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !left.is_empty() && Instant::now() < deadline {
            left.retain(|&tid| !ptrace::try_reap(tid));
            if !left.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        frozen.done = true;
    }
    stats.frozen = frozen_at.elapsed();
    stats.total = t0.elapsed();
    Ok(stats)
}

fn dump_process(pid: i32, frozen: &Frozen, tree: &[i32], dir: &Path, files: &mut FileTable, shm: &mut ShmemTable) -> Result<Process> {
    if Stat::read(pid)?.state() == 'Z' {
        return zombie::dump(pid, tree);
    }
    let st = Status::read(pid)?;
    let stat = Stat::read(pid)?;
    let maps = proc::smaps(pid)?;
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
        namespaces: ns::dump(pid, if in_tree { ppid } else { std::process::id() as i32 })?,
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
    p.mm = Some(mem::dump(pid, &maps, dir, shm)?);
    tracing::debug!(pid, elapsed_ms = t.elapsed().as_secs_f64() * 1e3, "memory dumped");
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
    Ok(p)
}
