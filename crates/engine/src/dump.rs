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
//! ([`crate::kill_frozen_tree`], commit).

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lpm_image::{Process, TreeImage};
use lpm_sys::ptrace::{self, Regs};
use lpm_sys::remote::Remote;

use crate::files::FileTable;
use crate::handoff::{self, Handoff};
use crate::mem::ShmemTable;
use crate::proc::{self, Stat, Status};
use crate::stop::{cgroup_freeze, not_freezable, stop_tree, syscall_ip, Frozen, Seized, StoppedTree};
use crate::task::Scratch;
use crate::{cpu, files, io_err, ipc, locks, mem, ns, seccomp, task, timers, zombie, EngineError, Result, StepExt};

/// How to checkpoint, as `lpm checkpoint` asks; [`DumpOptions`] has
/// everything (this is its subset, kept so its users need not change).
#[derive(Clone, Debug, Default)]
pub struct CheckpointOptions {
    /// Let the tree continue after the dump instead of killing it
    /// ([`After::Run`]; else [`After::Kill`]).
    pub leave_running: bool,
    /// Dump TCP connections to peers outside the tree instead of refusing
    /// them: lpm locks the network for them (packet filter rules that
    /// drop their packets, [`crate::netlock`]) before their state is read,
    /// and the restore lifts the lock once they exist again.
    pub tcp_established: bool,
    /// The tree is a shell job: descriptors of a pty slave whose master is
    /// outside the tree (the user's terminal) are recorded as such, for
    /// `RestoreOptions::shell_job` to open the restoring terminal in their
    /// place, instead of being refused.
    pub shell_job: bool,
    /// Dump unix sockets connected to a peer outside the tree instead of
    /// refusing them (CRIU's --ext-unix-sk): the restore connects each
    /// again to its peer's name.
    pub ext_unix_sk: bool,
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
    /// verdict: [`crate::thaw_tree`] lets it continue, [`crate::kill_frozen_tree`]
    /// ends it. Its file locks are let go of and its FIFOs emptied first,
    /// for the target to take ([`CheckpointStats::handoff`] holds them for
    /// the thaw). Refused (before anything is harmed) for a tree that is
    /// not alone in a cgroup v2 of its own, as no other freezer can hold
    /// it.
    Frozen,
}

/// The pages of a shared memory object a receiver holds
/// ([`DumpOptions::precopied_shm`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrecopiedShm {
    /// The receiver's file holding them, in the image directory.
    pub file: String,
    /// Offsets `[start, end)` in the object, page aligned.
    pub ranges: Vec<(u64, u64)>,
}

/// Every checkpoint option.
#[derive(Clone, Debug, Default)]
pub struct DumpOptions {
    /// What becomes of the tree afterwards.
    pub after: After,
    /// Connections to peers outside the tree are dumped, not refused:
    /// the network is locked, by the caller (a migration takes the
    /// partition's veth off the bridge) or by lpm (`lock_connections`).
    pub tcp_established: bool,
    /// lpm locks each connection to a peer outside the tree itself
    /// ([`crate::netlock`]), before its state is read: with
    /// [`After::Kill`] the rules stay until a restore of the image lifts
    /// them (the image records them); on failure, or with [`After::Run`]
    /// once the tree runs again, they are removed.
    pub lock_connections: bool,
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
    /// Shared memory objects (MAP_SHARED anonymous areas' objects, SysV
    /// segments) whose pages the receiver holds, each in a precopy file
    /// of its own at offset = offset in the object: held data pages are
    /// recorded as precopied runs and not read, holes stay holes. Used
    /// only when every process of the tree has an entry in `precopied`
    /// (each was tracked, or the objects were sent again after it came:
    /// one that was not may have written without a tracked page table);
    /// else every object is saved whole.
    pub precopied_shm: HashMap<crate::ShmRef, PrecopiedShm>,
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
    /// The frames of the pages the tree's processes share copy-on-write,
    /// read shortly before the stop ([`crate::read_shared_pages`], with the
    /// areas of `smaps_hint`): the stop's first read of them when it still
    /// covers every process concerned; used only if the stop's own read
    /// agrees with it entirely.
    pub shared_hint: Option<crate::cow::SharedPages>,
    /// As [`CheckpointOptions::shell_job`].
    pub shell_job: bool,
    /// Unix sockets connected to a peer outside the tree are dumped as
    /// connected to an external peer, not refused
    /// ([`CheckpointOptions::ext_unix_sk`]).
    pub ext_unix_sk: bool,
}

impl From<&CheckpointOptions> for DumpOptions {
    fn from(o: &CheckpointOptions) -> DumpOptions {
        DumpOptions {
            after: if o.leave_running { After::Run } else { After::Kill },
            tcp_established: o.tcp_established,
            lock_connections: o.tcp_established,
            shell_job: o.shell_job,
            ext_unix_sk: o.ext_unix_sk,
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
    /// Pages recorded as shared copy-on-write with another process of the
    /// tree (saved once, with that process).
    pub shared_pages: u64,
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

/// Checkpoints the tree rooted at `root` into `dir` (`lpm checkpoint`).
pub fn checkpoint(root: i32, dir: &Path, opts: &CheckpointOptions) -> Result<CheckpointStats> {
    checkpoint_with(root, dir, &opts.into())
}

/// Checkpoints the tree rooted at `root` into `dir` with every option:
/// [`stop_tree`] then [`StoppedTree::dump`].
pub fn checkpoint_with(root: i32, dir: &Path, opts: &DumpOptions) -> Result<CheckpointStats> {
    stop_tree(root)?.dump(dir, opts)
}

impl StoppedTree {
    /// Writes the tree's images into `dir`, then does with the tree what
    /// `opts.after` says. On error the tree continues as it was.
    pub fn dump(mut self, dir: &Path, opts: &DumpOptions) -> Result<CheckpointStats> {
        let root = self.root;
        if opts.after == After::Frozen && self.cgroup.is_none() {
            return Err(not_freezable(root));
        }
        lpm_image::create_private_dir(dir).map_err(io_err(format!("create image directory {}", dir.display())))?;
        crate::restore::check_groups(&crate::restore::Member::read(&self.order), root as u32, |pid| {
            crate::restore::outside_tree(&self.order, pid)
        })?;
        let precopied: HashMap<i32, Vec<(u64, u64)>> = opts.precopied.iter().map(|(&pid, r)| (pid, page_ranges(r))).collect();
        let mut tree = TreeImage {
            writer: format!("lpm {}", env!("CARGO_PKG_VERSION")),
            created_unix_ms: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
            ..Default::default()
        };
        let mut files = FileTable::default();
        files.ghosts.dir = Some(dir.to_path_buf());
        files.tree = self.order.clone();
        files.tcp_established = opts.tcp_established;
        files.shell_job = opts.shell_job;
        files.ext_unix_sk = opts.ext_unix_sk;
        files.lock = opts.lock_connections.then(crate::netlock::NetLock::new);
        let mut shm = ShmemTable::default();
        if self.order.iter().all(|pid| opts.precopied.contains_key(pid)) {
            shm.precopied = opts
                .precopied_shm
                .iter()
                .map(|(&k, h)| (k, PrecopiedShm { file: h.file.clone(), ranges: page_ranges(&h.ranges) }))
                .collect();
        } else if !opts.precopied_shm.is_empty() {
            tracing::debug!(root, "a process was not tracked through pre-copy: shared memory is saved whole");
        }
        // Pages shared copy-on-write can only be shared with a parent or
        // a child, or through them: only such processes are looked at.
        let members = crate::restore::Member::read(&self.order);
        let related = |pid: i32| members.iter().any(|m| (m.pid == pid as u32 && m.ppid != 0) || m.ppid == pid as u32);
        let t0 = Instant::now();
        let lap = |what: &str| tracing::debug!(root, what, ms = t0.elapsed().as_secs_f64() * 1e3, "dump lap");
        let mut cow = crate::cow::CowTable::new()?;
        let mut maps_of = self.order.iter().map(|&pid| Ok((pid, areas(pid, opts.smaps_hint.get(&pid))?))).collect::<Result<Vec<_>>>()?;
        let shared: Vec<(i32, &[proc::MapEntry])> =
            maps_of.iter().filter(|(pid, _)| related(*pid)).map(|(pid, m)| (*pid, m.as_slice())).collect();
        lap("areas");
        if !shared.is_empty() {
            cow.settle(&shared, opts.shared_hint.as_ref())?;
        }
        lap("settle");
        for (pid, maps) in maps_of.drain(..) {
            let held = precopied.get(&pid).map(Vec::as_slice).unwrap_or(&[]);
            let cow = related(pid).then_some(&mut cow);
            let p = dump_process(pid, &self.frozen, &self.order, dir, &mut files, &mut shm, held, opts.external_netns, maps, cow)?;
            tree.processes.push(p);
        }
        lap("processes");
        files::reconcile_connections(&mut files)?;
        files::tty::check_dev_tty_sharing(&files.files, &tree.processes)?;
        files::link_watched_ghosts(&mut files)?;
        // Removed when dropped (on any error from here, or once a tree
        // that goes on runs again), kept with a killed tree's image.
        let lock = files.lock.take();
        if opts.after == After::Kill {
            tree.net_lock = lock.as_ref().and_then(|l| l.image());
        }
        let first = self.frozen.threads.first().map(|s| s.tid).unwrap_or(root);
        tree.cpu = Some(cpu::host(&ptrace::get_xstate(first).step(first, || "read xstate".into())?));
        tree.root_pid = root as u32;
        tree.files = files.files;
        tree.pipes = files.pipes.into_values().collect();
        tree.ghosts = files.ghosts.list;
        tree.shmems = shm.saved.into_values().collect();
        // The restore must be able to share again every page shared now.
        crate::cow::plan(&tree)?;
        lap("plan");
        lpm_image::write_tree(dir, &tree)?;
        tracing::debug!(root, elapsed_ms = self.started.elapsed().as_secs_f64() * 1e3, "images written");
        // Read back while still stopped: nothing may have moved.
        self.reread(&tree)?;
        lap("reread");
        // The image is complete: what the target must take is let go of
        // while every thread is still seized (taken back on any error).
        let mut handoff = if opts.after == After::Frozen { handoff::release(&tree, &self.leaders())? } else { Handoff::default() };
        lap("handoff");
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
                } else if r.cow_pid != 0 {
                    stats.shared_pages += r.npages
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
            After::Kill => {
                let silenced = files::silence_connections(&tree);
                self.kill();
                drop(silenced);
                if let Some(l) = lock {
                    l.keep();
                }
            }
        }
        lap("after");
        stats.frozen = self.stopped_at.elapsed();
        stats.total = self.started.elapsed();
        stats.handoff = handoff;
        Ok(stats)
    }

    /// The stopped tree read back and compared with the image just written
    /// ([`crate::verify`]): a difference is a state that moved while the
    /// tree was stopped, which no image may miss.
    fn reread(&self, tree: &TreeImage) -> Result<()> {
        let hosts: HashMap<u32, i32> = tree.processes.iter().map(|p| (p.pid, p.pid as i32)).collect();
        let files: HashMap<u32, &lpm_image::FileImage> = tree.files.iter().map(|f| (f.id, f)).collect();
        let pipes: HashMap<u64, &lpm_image::PipeImage> = tree.pipes.iter().map(|p| (p.id, p)).collect();
        let ghosts: HashMap<u64, &lpm_image::GhostImage> = tree.ghosts.iter().map(|g| (g.id, g)).collect();
        let tids: HashMap<i32, Vec<i32>> =
            self.order.iter().map(|&pid| (pid, self.frozen.threads.iter().filter(|s| s.pid == pid).map(|s| s.tid).collect())).collect();
        let empty = Vec::new();
        let identity: HashMap<u32, u32> = tree.files.iter().filter_map(|f| f.tty.as_ref()).map(|t| (t.index, t.index)).collect();
        let procs: Vec<crate::verify::Restored<'_>> = tree
            .processes
            .iter()
            .map(|p| crate::verify::Restored {
                image: p,
                host: p.pid as i32,
                tids: tids.get(&(p.pid as i32)).unwrap_or(&empty),
                hosts: &hosts,
                cgroups: &[],
                files: &files,
                pipes: &pipes,
                ghosts: &ghosts,
                processes: &tree.processes,
                shmems: &tree.shmems,
                ptys: &identity,
                dumped: true,
            })
            .collect();
        crate::verify::tree(&procs)
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
    cow: Option<&mut crate::cow::CowTable>,
) -> Result<Process> {
    if Stat::read(pid)?.state() == 'Z' {
        return zombie::dump(pid, tree);
    }
    let begun = Instant::now();
    let lap = |what: &str| tracing::debug!(pid, what, ms = begun.elapsed().as_secs_f64() * 1e3, "process lap");
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
        ctty: files::tty::ctty(pid, tree)?,
        stop_signal: threads.iter().map(|t| t.stop_signal).find(|&s| s != 0).unwrap_or(0) as u32,
        nspid: st.nums("NSpid"),
        nspgid: st.nums("NSpgid"),
        start_time: stat.num(22),
        namespaces: ns::dump(pid, if in_tree { ppid } else { std::process::id() as i32 }, external_netns && !in_tree)?,
        ..Default::default()
    };
    lap("ns");
    if let Some(n) = p.namespaces.as_mut() {
        ipc::dump_ns(pid, n, dir, &shm.precopied)?;
    }
    p.seccomp = seccomp::dump(pid, &threads.iter().map(|t| t.tid).collect::<Vec<_>>())?;
    lap("seccomp");
    p.fds = files::dump(pid, files)?;
    lap("fds");
    let gone = files::regular::cwd(pid, Some(&mut files.ghosts))?;
    (p.cwd_ghost, p.cwd_proc_pid) = (gone.ghost, gone.proc_pid);
    let tids: Vec<i32> = threads.iter().map(|t| t.tid).collect();
    let earlier = &tree[..tree.iter().position(|&t| t == pid).unwrap_or(0)];
    p.shares_parent_files = files::fd_table(pid, in_tree.then_some(ppid), earlier, &tids)?;
    let regs: Vec<(i32, Regs)> = threads.iter().map(|t| (t.tid, t.regs)).collect();
    lap("fd_table");
    p.file_locks = locks::dump(pid, &p.fds, &regs)?;
    lap("locks");
    p.sysv_shm_maps = ipc::dump_maps(pid, &maps)?;
    let t = Instant::now();
    p.mm = Some(mem::dump(pid, &maps, dir, shm, precopied, cow, &mut files.ghosts)?);
    tracing::debug!(pid, state_ms = (t - begun).as_secs_f64() * 1e3, elapsed_ms = t.elapsed().as_secs_f64() * 1e3, "memory dumped");
    // Remote calls run with every signal blocked, so none is delivered (or
    // lost) while we borrow the threads; the masks are put back on release.
    for s in &threads {
        ptrace::set_sigmask(s.tid, !0).step(s.tid, || "block signals".into())?;
    }
    let mut lr = Remote::new(pid, ip, leader.regs);
    let (addr, trap) = scratch(pid, &mut lr)?;
    let s = Scratch { addr, len: if trap { BATCH_AT } else { TRAP_AT } };
    // A `syscall; int3` of our own in the scratch page halves the cost of
    // each remote call (one resume and one stop, not two: see
    // `Remote::with_trap`), which a tree of many processes with many
    // signal handlers pays a few dozen times each in the stop. The page
    // is unmapped through the vDSO's instruction, never from itself.
    // Its batch code runs the reads of a process (or thread) in one resume.
    let remote = |tid: i32, regs: Regs| {
        if trap {
            Remote::with_trap(tid, addr + TRAP_AT, regs).with_batch(addr + BATCH_AT)
        } else {
            Remote::new(tid, ip, regs)
        }
    };
    let mut fast = remote(pid, leader.regs);
    let res = (|| -> Result<()> {
        lap("mmap");
        task::dump_process(pid, &mut fast, s, &mut p)?;
        lap("task");
        fast.call(libc::SYS_brk, &[0]).step(pid, || "remote brk".into()).map(|brk| {
            if let Some(l) = p.mm.as_mut().and_then(|m| m.layout.as_mut()) {
                l.brk = brk;
            }
        })?;
        for t in &threads {
            // Saved as they were at the interrupt stop: the restore puts
            // them back at such a stop, where the kernel completes an
            // interrupted syscall itself.
            let mut r = remote(t.tid, t.regs);
            let mut th = task::dump_thread(pid, t.tid, t.tid as u32, &t.regs, &mut r, s)?;
            th.nstid = Status::read_task(pid, t.tid)?.nums("NSpid");
            th.sigmask = t.sigmask;
            p.threads.push(th);
        }
        lap("threads");
        timers::dump(pid, &mut fast, s, &mut p)?;
        lap("timers");
        Ok(())
    })();
    lr.call(libc::SYS_munmap, &[addr, 4096]).step(pid, || "remote munmap scratch".into())?;
    res?;
    tracing::debug!(pid, elapsed_ms = begun.elapsed().as_secs_f64() * 1e3, "process dumped");
    Ok(p)
}

/// Where in the dump's scratch page its `syscall; int3` sits: the bytes
/// before [`BATCH_AT`] are the remote calls' arguments and results.
const TRAP_AT: u64 = 4096 - 8;

/// Where in the dump's scratch page its [`lpm_sys::remote::BATCH_CODE`]
/// sits, when the page is executable.
const BATCH_AT: u64 = TRAP_AT - 64;

/// Maps the dump's scratch page in stopped process `pid` (through `r`,
/// which runs the vDSO's `syscall`): readable, writable and executable,
/// with the batch code at [`BATCH_AT`] and `syscall; int3` at
/// [`TRAP_AT`], when the process may map such a
/// page; else readable and writable only (a process under
/// PR_SET_MDWE refuses writable code). Returns its address and whether
/// it holds the trap.
fn scratch(pid: i32, r: &mut Remote) -> Result<(u64, bool)> {
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as u64;
    let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
    let rwx =
        r.raw(libc::SYS_mmap, &[0, 4096, prot | libc::PROT_EXEC as u64, flags, u64::MAX, 0]).step(pid, || "remote mmap scratch".into())?;
    if !(-4095..0).contains(&rwx) {
        let addr = rwx as u64;
        let mut code = lpm_sys::remote::BATCH_CODE.to_vec();
        code.resize((TRAP_AT - BATCH_AT) as usize, 0xcc);
        code.extend_from_slice(&[0x0f, 0x05, 0xcc, 0xcc]);
        if let Err(e) = ptrace::write_mem(pid, addr + BATCH_AT, &code).step(pid, || "write the scratch page's code".into()) {
            let _ = r.call(libc::SYS_munmap, &[addr, 4096]);
            return Err(e);
        }
        return Ok((addr, true));
    }
    // Writable code refused: under PR_SET_MDWE, which the restore does
    // not set again (a restored process would run without it), refused
    // here by name. Asked only on this path: a process that may map
    // writable code has none.
    let mdwe = r.raw(libc::SYS_prctl, &[PR_GET_MDWE, 0, 0, 0, 0]).step(pid, || "remote PR_GET_MDWE".into())?;
    if mdwe > 0 {
        return Err(EngineError::Unsupported {
            pid,
            kind: "memory-deny-write-execute",
            what: format!("PR_SET_MDWE flags {mdwe:#x}: the restore does not set it again"),
        });
    }
    let addr = r.call(libc::SYS_mmap, &[0, 4096, prot, flags, u64::MAX, 0]).step(pid, || "remote mmap scratch".into())?;
    Ok((addr, false))
}

/// prctl's PR_GET_MDWE (absent from libc 0.2's constants).
const PR_GET_MDWE: u64 = 66;
