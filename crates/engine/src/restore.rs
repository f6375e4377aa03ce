//! Restore: rebuild a tree from its image, from outside, in named stages.
//!
//! Each stage's barrier has a reason:
//! 1. `check`: refuse what cannot be honoured (format, CPU, taken pids)
//!    before anything is created.
//! 2. `prepare`: open every file and recreate shared memory in the
//!    restorer, so every puppet cloned afterwards inherits them.
//! 3. `spawn_tree`: create all processes (root by clone3 with set_tid,
//!    the rest by remote clone3 in their parent) before any address space
//!    is replaced, since children are cloned through the trampoline, and
//!    sessions are set as processes are born (setsid must precede children).
//! 4. `groups`: process groups once every group leader exists.
//!    Then the SysV objects of every owned ipc namespace are recreated with
//!    their ids (`ipc::restore`): shaping attaches segments by id.
//! 5. `shape`: per process memory, descriptors, namespaces' contents and
//!    process state; threads are cloned last, into the finished mm.
//!    Then namespaces' contents (private /proc), and inotify watches and
//!    fanotify marks through the restored processes (`files::restore_fsnotify`):
//!    after shaping, which opens files a watch would report, and once each
//!    process has its root and its mounts, through which their paths go.
//! 6. `creds`: seccomp filters (while the puppet still has CAP_SYS_ADMIN;
//!    suspended for the tracer until detach), then credentials last, as
//!    they may drop the rights of the steps above.
//!    Then `zombies`: zombies exit with their recorded status while every
//!    parent is still stopped (its SIGCHLD state is put back as it was).
//! 7. `finish`: registers and signal masks, trampoline unmapped.
//!    Then, with [`RestoreOptions::verify`], `verify`: the finished tree is
//!    read back from the kernel and compared with the image
//!    ([`crate::verify`]) while no thread of it has run yet; a difference
//!    kills it.
//! 8. `release`: detach all at once so the tree starts running together.
//!    [`restore_held`] stops before it: a live migration's target holds the
//!    finished tree stopped until the source gives it up ([`Held`]).
//!
//! A failure at any stage kills every puppet: nothing is left behind.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lpm_image::{Process, TreeImage};
use lpm_sys::ptrace::{self, Stop};
use lpm_sys::puppet::{self, CloneArgs, SCRATCH_OFFSET, TRAMPOLINE_LEN};
use lpm_sys::remote::{park, Remote};

use crate::ahead::{Ahead, AheadOutcome};
use crate::files::{self, OpenFiles};
use crate::mem::{self, ShmemObjects};
use crate::task::{self, put, Scratch};
use crate::{cpu, ipc, locks, ns, proc, seccomp, timers, zombie, EngineError, Result, StepExt};

/// How to restore.
#[derive(Debug, Default)]
pub struct RestoreOptions {
    /// A network namespace made by the caller (a partition's, holding its
    /// NIC) for the root, when the root founded its own: used instead of
    /// a new one, and the sockets of the root's namespace are created in
    /// it. Required when the image marks that namespace external
    /// ([`crate::DumpOptions::external_netns`]); refused when the root
    /// owns none.
    pub netns: Option<OwnedFd>,
    /// Cgroup directories (v1 hierarchies and/or v2) the root joins as
    /// soon as it exists, before it has children or threads, so that every
    /// task of the tree starts in them.
    pub cgroups: Vec<PathBuf>,
    /// Established TCP connections stay in repair mode until
    /// [`Held::release`], which then sends each one's whole send queue
    /// again: a migration unlocks the network just before it releases the
    /// tree, so what the peer has not acknowledged reaches it at once
    /// rather than after the restored socket's first retransmission
    /// timeout (a second).
    pub defer_tcp: bool,
    /// Precopied pages are not copied during the restore: their areas are
    /// registered for a lazy fill, which [`Held::take_lazy`] hands to the
    /// caller to run ([`crate::LazyFill::run`]) on a thread of its own once
    /// the tree is released. The stop then no longer grows with memory.
    pub lazy_fill: bool,
    /// A [`Vessel`] made ahead, already in the cgroups: the root puppet
    /// is cloned from it and inherits them, so the restore writes no
    /// cgroup.procs (each write waits out an RCU grace period, 5 to 15 ms
    /// inside a migration's downtime). Used when its trampoline address
    /// is free in the image; otherwise the root is spawned as without.
    pub vessel: Option<Vessel>,
    /// Per process (its pid in the image), precopied page ranges to fill
    /// before the tree runs even with `lazy_fill`: a migration's last
    /// round, the pages written last, which the tree would otherwise touch
    /// first, each touch a fault served by the lazy fill while it waits.
    pub hot: HashMap<u32, Vec<(u64, u64)>>,
    /// Read the finished tree back from the kernel before any of it runs
    /// and compare it with the image ([`crate::verify`]): a difference is
    /// an error naming the process, the object and the field, and the
    /// tree is killed.
    pub verify: bool,
    /// Descriptors of the user's terminal that a shell job's image
    /// recorded ([`crate::DumpOptions::shell_job`]) are opened on the
    /// restorer's own controlling terminal, which takes the recorded
    /// termios; without it such an image is refused.
    pub shell_job: bool,
}

/// A stopped child made ahead of a restore (when a migration prepares the
/// target, say) and placed in the restore's cgroups, from which the
/// restore clones the root puppet ([`RestoreOptions::vessel`]). It shares
/// our descriptor table, so the root gets the files the restore opens
/// later, as a root spawned by us would. Made and used on the same
/// thread: that thread is its tracer. Dropping it kills it.
#[derive(Debug)]
pub struct Vessel {
    pid: i32,
    base: ptrace::Regs,
    trampoline: u64,
    /// Killed and reaped already (its pid may be someone else's now).
    ended: std::sync::atomic::AtomicBool,
    /// It has a mount namespace of its own ([`Vessel::own_mounts`]).
    own_mounts: std::sync::atomic::AtomicBool,
}

/// Where a vessel maps its trampoline: far from where programs map
/// things (PIE binaries and heaps near 0x55..., mmap and stacks below
/// 0x7fff...), so it is free in almost any image.
const VESSEL_TRAMPOLINE: u64 = 0x2000_0000_0000;

impl Vessel {
    /// Spawns a vessel and puts it into `cgroups` (cgroup directories, as
    /// [`RestoreOptions::cgroups`]).
    pub fn new(cgroups: &[PathBuf]) -> Result<Vessel> {
        let v = Vessel::spawn()?;
        Vessel::place(v.pid, cgroups)?;
        Ok(v)
    }

    /// Puts vessel `pid` into `cgroups`. Any thread may: a write to
    /// cgroup.procs waits out an RCU grace period (5 to 15 ms), which a
    /// caller may rather spend while it does something else. The restore
    /// needs it done.
    pub fn place(pid: i32, cgroups: &[PathBuf]) -> Result<()> {
        join_cgroups(pid, "vessel", cgroups)
    }

    /// Spawns a vessel in lpm's own cgroups (see [`Vessel::place`]). The
    /// thread that spawns it traces it, and must be the one that restores.
    pub fn spawn() -> Result<Vessel> {
        let ours: Vec<(u64, u64)> = proc::maps(std::process::id() as i32)?.iter().map(|e| (e.start, e.end)).collect();
        if !range_free(&ours, VESSEL_TRAMPOLINE) {
            return Err(EngineError::Incompatible(format!("the vessel's trampoline address {VESSEL_TRAMPOLINE:#x} is taken in lpm")));
        }
        let pid = puppet::spawn_vessel(VESSEL_TRAMPOLINE).step(0, || "spawn restore vessel".into())?;
        let base = match ptrace::get_regs(pid).step(pid, || "read vessel registers".into()) {
            Ok(b) => b,
            Err(e) => {
                end(pid);
                return Err(e);
            }
        };
        // From here on, dropping it ends it.
        let v = Vessel { pid, base, trampoline: VESSEL_TRAMPOLINE, ended: false.into(), own_mounts: false.into() };
        ptrace::set_sigmask(pid, !0).step(pid, || "block signals".into())?;
        Ok(v)
    }
}

impl Vessel {
    /// Gives the vessel a mount namespace of its own, private and without
    /// the host's /run/netns, as a partition's is: the root of a tree
    /// that owns its mount namespace (every partition's) is then cloned
    /// from a copy with nothing to detach, and the detaching (an RCU
    /// grace period, 5 to 15 ms) is spent now, ahead of a migration's
    /// stop. Such a root takes the vessel's namespace itself (a copy would
    /// be torn down with the vessel, another grace period in the stop).
    /// Only for such trees: a root that shares the restorer's mount
    /// namespace would share the vessel's instead.
    pub fn own_mounts(&self) -> Result<()> {
        let mut r = Remote::with_trap(self.pid, self.trampoline, self.base);
        let s = Scratch { addr: self.trampoline + SCRATCH_OFFSET, len: TRAMPOLINE_LEN - SCRATCH_OFFSET };
        r.call(libc::SYS_unshare, &[libc::CLONE_NEWNS as u64]).step(self.pid, || "remote unshare of the vessel's mounts".into())?;
        self.own_mounts.store(true, std::sync::atomic::Ordering::SeqCst);
        ns::isolate_mounts(self.pid, &mut r, s, None)?;
        ns::hide_run_netns(self.pid, &mut r, s)
    }

    /// Its pid (in the cgroups it was given until it is used).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Kills and reaps it, once: the restore does as soon as the root is
    /// cloned, so it leaves the cgroups to the tree.
    fn end(&self) {
        if !self.ended.swap(true, std::sync::atomic::Ordering::SeqCst) {
            end(self.pid);
        }
    }
}

impl Drop for Vessel {
    fn drop(&mut self) {
        self.end();
    }
}

/// Moves task `pid` (a `who`) into each cgroup directory of `cgroups`.
fn join_cgroups(pid: i32, who: &str, cgroups: &[PathBuf]) -> Result<()> {
    for dir in cgroups {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, pid.to_string()).map_err(crate::io_err(format!("move {who} {pid} into {}", procs.display())))?;
    }
    Ok(())
}

/// Kills and reaps a child of ours.
fn end(pid: i32) {
    lpm_sys::misc::kill(pid, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ptrace::try_reap(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A restored, running tree.
#[derive(Clone, Debug)]
pub struct Restored {
    /// Host pid of the root.
    pub root_pid: i32,
    /// Processes restored.
    pub processes: usize,
    /// Threads restored.
    pub threads: usize,
    /// Time from start to running.
    pub elapsed: Duration,
    /// Time the read-back check took ([`RestoreOptions::verify`]), part
    /// of `elapsed`.
    pub verified: Option<Duration>,
}

/// Room for the special mappings to pass through, after the trampoline.
pub(crate) const PARKING: u64 = 1 << 20;

/// A puppet being shaped.
struct Puppet {
    host: i32,
    base: ptrace::Regs,
    /// Host tids of its threads, in image order (leader first).
    tids: Vec<i32>,
}

/// Every puppet created so far; on drop (error paths) all are killed.
pub(crate) struct Puppets {
    by_pid: HashMap<u32, Puppet>,
    order: Vec<u32>,
    armed: bool,
    /// Address spaces registered for the lazy fill.
    spaces: Vec<crate::lazy::Space>,
}

impl Drop for Puppets {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for p in self.by_pid.values() {
            lpm_sys::misc::kill(p.host, libc::SIGKILL);
        }
        // Dead puppets come back to us (their tracer, and as subreaper
        // their reaper) one by one: collect them until none is left, so a
        // failed restore leaves no zombie holding a pid. Each by its own
        // pid: a wait for any child would also take the ptrace stops of
        // trees that other threads of lpmd are stopping or dumping, and
        // leave those threads waiting for a stop already taken.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut left: Vec<i32> = self.by_pid.values().map(|p| p.host).collect();
        while Instant::now() < deadline && !left.is_empty() {
            // A puppet whose parent was a puppet too is reported twice:
            // to us as its tracer, then as its reaper once reparented.
            left.retain(|&pid| {
                lpm_sys::ptrace::try_reap(pid);
                Path::new(&format!("/proc/{pid}")).exists()
            });
            if !left.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

struct Ctx<'a> {
    tree: &'a TreeImage,
    dir: &'a Path,
    trampoline: u64,
    lazy: bool,
    hot: &'a HashMap<u32, Vec<(u64, u64)>>,
    shmem: &'a ShmemObjects,
    /// The restorer's descriptor of each memfd, by inode at dump.
    memfds: HashMap<u64, i32>,
    /// The restorer's O_PATH descriptor of each ghost, by ghost id.
    ghosts: HashMap<u64, i32>,
    /// What each process does about the pages it shares (cow.rs).
    plan: crate::cow::Plan,
    /// Where the data of shared pages is read from.
    sources: mem::Sources<'a>,
    /// Spawning ahead of a migration's stop (ahead.rs): every puppet
    /// shares the restorer's descriptor table, and takes its own copy
    /// once the stop has opened the tree's files.
    ahead: bool,
}

impl Ctx<'_> {
    fn scratch(&self) -> Scratch {
        Scratch { addr: self.trampoline + SCRATCH_OFFSET, len: TRAMPOLINE_LEN - SCRATCH_OFFSET }
    }

    fn remote(&self, tid: i32, base: ptrace::Regs) -> Remote {
        Remote::with_trap(tid, self.trampoline, base)
    }

    /// What the memory restore of process `p` (puppet `host`) needs.
    fn mem<'b>(&'b self, p: &'b Process, host: i32) -> mem::RestoreCtx<'b> {
        let mut eager: Vec<u64> = p
            .threads
            .iter()
            .flat_map(|t| {
                let rseq = t.rseq.as_ref().filter(|r| r.addr != 0).map(|r| (r.addr, r.len.max(1) as u64));
                let exit = [(t.clear_child_tid, 4), (t.robust_list, t.robust_list_len.max(1))];
                rseq.into_iter().chain(exit).filter(|&(addr, _)| addr != 0)
            })
            .flat_map(|(addr, len)| {
                let first = addr & !(crate::PAGE - 1);
                let last = (addr + len - 1) & !(crate::PAGE - 1);
                [first, last]
            })
            .chain(
                self.hot
                    .get(&p.pid)
                    .into_iter()
                    .flatten()
                    .flat_map(|&(s, e)| (s / crate::PAGE..e.div_ceil(crate::PAGE)).map(|n| n * crate::PAGE)),
            )
            .collect();
        // Sorted and once each: the fill looks pages up by address.
        eager.sort_unstable();
        eager.dedup();
        mem::RestoreCtx {
            pid: host,
            dir: self.dir,
            trampoline: self.trampoline,
            parking: self.trampoline + TRAMPOLINE_LEN,
            shmem: self.shmem,
            memfds: &self.memfds,
            ghosts: &self.ghosts,
            lazy: self.lazy,
            eager,
            cow: self.plan.of(p.pid),
            inherited: &[],
        }
    }
}

/// Restores the image in `dir`; returns once the tree runs.
pub fn restore(dir: &Path, opts: &RestoreOptions) -> Result<Restored> {
    restore_held(dir, opts)?.release()
}

/// A restored tree, complete but held: every thread is stopped under
/// ptrace by the thread that called [`restore_held`], which must also be
/// the one to call [`Held::release`] (ptrace is per thread; `Held` is not
/// `Send` for that reason). Dropping it unreleased kills and reaps every
/// task, leaving nothing behind.
pub struct Held {
    /// Host pid of the root.
    pub root_pid: i32,
    /// Processes restored.
    pub processes: usize,
    /// Threads restored.
    pub threads: usize,
    puppets: Puppets,
    detach: Vec<i32>,
    deferred: Vec<files::Deferred>,
    /// The checkpoint's network lock, lifted at the release.
    net_lock: Option<lpm_image::NetLockImage>,
    lazy: Option<crate::LazyFill>,
    _open: OpenFiles,
    _shmem: ShmemObjects,
    started: Instant,
    /// Time the read-back check took, when it ran.
    pub verified: Option<Duration>,
    /// What became of the tree spawned ahead, when one was given
    /// ([`restore_held_with`]).
    pub ahead: Option<AheadOutcome>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Held")
            .field("root_pid", &self.root_pid)
            .field("processes", &self.processes)
            .field("threads", &self.threads)
            .finish()
    }
}

impl Held {
    /// The precopied pages still to fill: run it (on any thread) before
    /// or right after [`Held::release`]; the tree's first touch of such a
    /// page waits for it.
    pub fn take_lazy(&mut self) -> Option<crate::LazyFill> {
        self.lazy.take()
    }

    /// Host pids of every process (zombies included), parents first.
    pub fn pids(&self) -> Vec<i32> {
        self.puppets.order.iter().map(|pid| self.puppets.by_pid[pid].host).collect()
    }

    /// Detaches every thread at once: the tree runs. On error every task
    /// is killed.
    pub fn release(self) -> Result<Restored> {
        let Held { root_pid, processes, threads, mut puppets, detach, deferred, net_lock, lazy, _open, _shmem, started, verified, .. } =
            self;
        if lazy.is_some() {
            return Err(EngineError::Incompatible("the lazy fill was not taken before the release: the tree would wait forever".into()));
        }
        // Every connection exists again: the checkpoint's lock goes, and
        // each connection to a peer outside the tree then probes the peer
        // as it leaves repair mode, which answers at once with what it
        // got and its window (`files::inet::probes`).
        if let Some(l) = &net_lock {
            crate::netlock::unlock(l)?;
        }
        files::finish_deferred(&deferred)?;
        for tid in detach {
            ptrace::detach(tid, 0).step(tid, || "detach".into())?;
        }
        puppets.armed = false;
        Ok(Restored { root_pid, processes, threads, elapsed: started.elapsed(), verified })
    }
}

/// A restored tree parked for a migration's handover ([`Held::park`]):
/// complete, frozen in its cgroup v2 and traced by nobody, so it outlives
/// the process that restored it; its established connections stay in
/// repair mode until [`Parked::run`]. What it holds is plain data, which a
/// migration records so that a restarted agent can still run it or end
/// it.
#[derive(Clone, Debug)]
pub struct Parked {
    /// Host pid of the root.
    pub root_pid: i32,
    /// Host pids of every process, parents first.
    pub pids: Vec<i32>,
    /// The cgroup v2 directory whose freezer holds the tree.
    pub cgroup: PathBuf,
    /// The connections still in repair mode.
    pub connections: Vec<ParkedConnection>,
    /// Their images, when this process restored the tree (else read from
    /// the image directory by [`Parked::run`]).
    deferred: Vec<files::Deferred>,
}

/// An established connection of a parked tree, still in repair mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParkedConnection {
    /// Host pid of the process holding it.
    pub pid: i32,
    /// Its descriptor there.
    pub fd: u32,
    /// Its open file's id in the image.
    pub file_id: u32,
    /// It sends a window probe when it leaves repair mode (its peer is
    /// outside the tree).
    pub probe: bool,
}

impl Parked {
    /// A parked tree as recorded (by an agent that restarted since).
    pub fn from_parts(root_pid: i32, pids: Vec<i32>, cgroup: PathBuf, connections: Vec<ParkedConnection>) -> Parked {
        Parked { root_pid, pids, cgroup, connections, deferred: Vec::new() }
    }

    /// Lets the tree run: every connection leaves repair mode (sending
    /// what its peer has not acknowledged; `dir` is the image the tree was
    /// restored from, read only when this process did not restore it),
    /// then the cgroup thaws. Safe to run again after a crash part way:
    /// a connection out of repair mode is left alone, a thawed cgroup
    /// stays thawed.
    ///
    /// A connection that cannot leave repair mode does not keep the rest
    /// of the tree frozen: the tree is thawed all the same, and the first
    /// such failure is returned (that connection is broken for its
    /// program, as a network failure would break it).
    pub fn run(&self, dir: &Path) -> Result<()> {
        let mut first = None;
        if self.deferred.len() == self.connections.len() {
            for d in &self.deferred {
                if let Err(e) = files::finish_deferred(std::slice::from_ref(d)) {
                    first.get_or_insert(e);
                }
            }
        } else {
            match lpm_image::read_tree(dir) {
                Ok(tree) => {
                    for c in &self.connections {
                        let res = match tree.files.iter().find(|f| f.id == c.file_id) {
                            Some(file) => {
                                let fd = lpm_image::Fd { fd: c.fd, cloexec: false, file_id: c.file_id };
                                let d = files::Deferred { pid: c.pid, fd, file: file.clone(), probe: c.probe };
                                files::finish_deferred(std::slice::from_ref(&d))
                            }
                            None => Err(EngineError::Incompatible(format!(
                                "pid {}: fd {} names file {}, which the image lacks",
                                c.pid, c.fd, c.file_id
                            ))),
                        };
                        if let Err(e) = res {
                            first.get_or_insert(e);
                        }
                    }
                }
                Err(e) => {
                    first.get_or_insert(e.into());
                }
            }
        }
        crate::stop::cgroup_freeze(&self.cgroup, false)?;
        first.map_or(Ok(()), Err)
    }
}

impl Held {
    /// Parks the tree for a handover: freezes `cgroup` (a cgroup v2
    /// directory holding every task of the tree; threads in their ptrace
    /// stops count as frozen at once), then detaches every thread, which
    /// the freezer then holds before it returns to user space. From here
    /// the tree no longer depends on this process: no tracer, and the
    /// puppets' PTRACE_O_EXITKILL (which killed a half-restored tree with
    /// its restorer) is gone with the tracing. The lazy fill must have been
    /// taken first, as for [`Held::release`]. On error every task is
    /// killed.
    pub fn park(self, cgroup: &Path) -> Result<Parked> {
        let Held { root_pid, mut puppets, detach, deferred, lazy, .. } = self;
        if lazy.is_some() {
            return Err(EngineError::Incompatible("the lazy fill was not taken before parking: the tree would wait forever".into()));
        }
        crate::stop::cgroup_freeze(cgroup, true)?;
        for tid in detach {
            ptrace::detach(tid, 0).step(tid, || "detach into the frozen cgroup".into())?;
        }
        puppets.armed = false;
        let pids = puppets.order.iter().map(|pid| puppets.by_pid[pid].host).collect();
        let connections =
            deferred.iter().map(|d| ParkedConnection { pid: d.pid, fd: d.fd.fd, file_id: d.file.id, probe: d.probe }).collect();
        Ok(Parked { root_pid, pids, cgroup: cgroup.to_path_buf(), connections, deferred })
    }
}

/// Restores the image in `dir` up to the last step: the tree is complete
/// and every thread holds at its final registers, stopped, until
/// [`Held::release`].
pub fn restore_held(dir: &Path, opts: &RestoreOptions) -> Result<Held> {
    restore_held_with(dir, opts, None)
}

/// [`restore_held`] with a tree spawned ahead of the stop (ahead.rs,
/// built on this thread): reused in place of the spawn stage when every
/// input of that stage is the same in the image, else discarded (its
/// puppets killed) before the ordinary spawn; [`Held::ahead`] says which.
pub fn restore_held_with(dir: &Path, opts: &RestoreOptions, ahead: Option<Ahead>) -> Result<Held> {
    let t0 = Instant::now();
    let tree = lpm_image::read_tree(dir)?;
    check(&tree)?;
    lpm_sys::misc::set_child_subreaper().step(0, || "become child subreaper".into())?;
    let stage = |name: &str| tracing::debug!(stage = name, elapsed_ms = t0.elapsed().as_secs_f64() * 1e3, "restore stage done");
    stage("check");
    // Connections an image's network lock holds stay in repair mode until
    // the release lifts it.
    let defer_tcp = opts.defer_tcp || tree.net_lock.is_some();
    let open = open_files(&tree, dir, opts.netns.as_ref().map(|f| f.as_fd()), opts.shell_job)?;
    stage("prepare (files)");
    let shmem = ShmemObjects::create(dir, &tree.shmems)?;
    let plan = crate::cow::plan(&tree)?;
    let mut outcome = None;
    let ahead = ahead.and_then(|a| {
        let free = range_free(&image_areas(&tree), a.trampoline);
        match a.misfit(&tree, plan.is_empty(), opts.netns.is_some(), free) {
            None => Some(a),
            Some(why) => {
                // Dropped here: its puppets die and free their pids
                // before the ordinary spawn asks for them.
                tracing::info!(processes = a.processes(), why, "tree spawned ahead discarded");
                outcome = Some(AheadOutcome::Discarded { why });
                None
            }
        }
    });
    let vessel = opts.vessel.as_ref().filter(|v| range_free(&image_areas(&tree), v.trampoline));
    let trampoline = match (&ahead, vessel) {
        (Some(a), _) => a.trampoline,
        (None, Some(v)) => v.trampoline,
        (None, None) => choose_trampoline(&tree)?,
    };
    let ctx = Ctx {
        tree: &tree,
        dir,
        trampoline,
        lazy: opts.lazy_fill,
        hot: &opts.hot,
        shmem: &shmem,
        memfds: open.memfds(&tree),
        ghosts: open.ghosts(),
        plan,
        sources: mem::Sources::new(dir, &tree),
        ahead: false,
    };
    let mut puppets = match ahead {
        Some(a) => {
            let n = a.processes();
            let p = adopt(&ctx, a)?;
            tracing::info!(processes = n, "tree spawned ahead reused");
            outcome = Some(AheadOutcome::Reused { processes: n });
            p
        }
        None => spawn_tree(&ctx, &open, &opts.cgroups, vessel)?,
    };
    if let Some(c) = &tree.cpu {
        // The root puppet's XSAVE area shows what this CPU and kernel hold.
        let host = puppets.by_pid[&tree.root_pid].host;
        cpu::check(c, &cpu::host(&ptrace::get_xstate(host).step(host, || "read xstate".into())?))?;
    }
    stage("spawn");
    groups(&ctx, &puppets)?;
    terminals(&ctx, &puppets, &open)?;
    let sysv = ipc::restore(&tree, dir, |pid| puppets.by_pid[&pid].host)?;
    let mut deferred = Vec::new();
    shape_all(&ctx, &mut puppets, &open, defer_tcp.then_some(&mut deferred))?;
    sysv.finish()?;
    // Every thread exists now: files can name their owners.
    files::restore_owners(&tree, |kind, id| match kind {
        lpm_image::OwnerKind::Thread => tree.processes.iter().find_map(|p| {
            let i = p.threads.iter().position(|t| t.tid == id)?;
            puppets.by_pid.get(&p.pid)?.tids.get(i).copied()
        }),
        _ => puppets.by_pid.get(&id).map(|q| q.host),
    })?;
    stage("shape");
    for p in &tree.processes {
        if let Some(n) = &p.namespaces {
            let pp = &puppets.by_pid[&p.pid];
            ns::restore(pp.host, &mut ctx.remote(pp.host, pp.base), ctx.scratch(), n)?;
        }
    }
    ns::attach_procs(&tree, ctx.scratch(), |pid| puppets.by_pid.get(&pid).map(|q| ctx.remote(q.host, q.base)))?;
    // Every process has its root and its mounts: watches and marks are
    // added where their processes see their paths.
    files::restore_fsnotify(&tree, &open, |pid| puppets.by_pid.get(&pid).map(|q| q.host))?;
    // Before seccomp and credentials, which may forbid what the helper
    // needs (clone3 with set_tid).
    for p in tree.processes.iter().filter(|p| p.cwd_proc_pid != 0 && p.zombie.is_none()) {
        let pp = &puppets.by_pid[&p.pid];
        proc_cwd(&ctx, pp.host, pp.base, p)?;
    }
    for p in &tree.processes {
        let pp = &puppets.by_pid[&p.pid];
        if let Some(sc) = &p.seccomp {
            seccomp::restore(
                pp.host,
                &pp.tids,
                &mut ctx.remote(pp.host, pp.base),
                ctx.scratch(),
                sc,
                p.prctl.as_ref().is_some_and(|x| x.no_new_privs),
            )?;
        }
        task::restore_creds(pp.host, &mut ctx.remote(pp.host, pp.base), ctx.scratch(), p)?;
    }
    stage("namespaces, creds");
    zombies(&ctx, &puppets, &open)?;
    let detach = finish(&ctx, &puppets)?;
    stage("finish");
    let verified = if opts.verify {
        let t = Instant::now();
        verify_tree(&tree, &puppets, &opts.cgroups, &open.ptys)?;
        stage("verify");
        Some(t.elapsed())
    } else {
        None
    };
    let lazy = crate::LazyFill::arm(std::mem::take(&mut puppets.spaces))?;
    Ok(Held {
        root_pid: puppets.by_pid[&tree.root_pid].host,
        processes: tree.processes.len(),
        threads: tree.processes.iter().map(|p| p.threads.len()).sum(),
        puppets,
        detach,
        deferred,
        net_lock: tree.net_lock.clone(),
        lazy,
        _open: open,
        _shmem: shmem,
        started: t0,
        verified,
        ahead: outcome,
        _not_send: std::marker::PhantomData,
    })
}

/// Stage 3 ahead of a migration's stop (ahead.rs): the tree `desc`
/// describes, spawned from `vessel` as [`spawn_tree`] spawns it, every
/// puppet sharing our descriptor table. Returns the puppets, the
/// trampoline and the network namespaces it was given.
pub(crate) fn spawn_ahead(
    desc: &TreeImage,
    net: HashMap<u64, OwnedFd>,
    cgroups: &[PathBuf],
    vessel: Vessel,
) -> Result<(Puppets, u64, HashMap<u64, OwnedFd>)> {
    if !range_free(&image_areas(desc), vessel.trampoline) {
        return Err(EngineError::Incompatible("not built ahead: the vessel's trampoline overlaps an area of the tree".into()));
    }
    let open = OpenFiles::only_net(net);
    let shmem = ShmemObjects::create(Path::new("/"), &[])?;
    let ctx = Ctx {
        tree: desc,
        // Read only for pages, which the ahead spawn never writes (no
        // tree sharing pages copy-on-write is built ahead).
        dir: Path::new("/"),
        trampoline: vessel.trampoline,
        lazy: false,
        hot: &HashMap::new(),
        shmem: &shmem,
        memfds: HashMap::new(),
        ghosts: HashMap::new(),
        plan: crate::cow::plan(desc)?,
        sources: mem::Sources::new(Path::new("/"), desc),
        ahead: true,
    };
    if !ctx.plan.is_empty() {
        return Err(EngineError::Incompatible("not built ahead: its description names pages shared copy-on-write".into()));
    }
    let mut puppets = spawn_tree(&ctx, &open, cgroups, Some(&vessel))?;
    puppets.order = desc.processes.iter().map(|p| p.pid).collect();
    let trampoline = ctx.trampoline;
    drop(ctx);
    Ok((puppets, trampoline, open.into_net()))
}

/// The tree spawned ahead stands for stage 3: each puppet leaves the
/// descriptor table it shared with us for a copy of it as it is now,
/// holding every file the stop opened, as a puppet forked now would.
fn adopt(ctx: &Ctx, a: Ahead) -> Result<Puppets> {
    let mut puppets = a.into_puppets();
    if let Some(p) = ctx.tree.processes.iter().find(|p| !puppets.by_pid.contains_key(&p.pid)) {
        return Err(EngineError::Incompatible(format!("pid {} is not in the tree spawned ahead", p.pid)));
    }
    for pid in &puppets.order {
        let p = &puppets.by_pid[pid];
        ctx.remote(p.host, p.base)
            .call(libc::SYS_unshare, &[libc::CLONE_FILES as u64])
            .step(p.host, || format!("remote unshare(CLONE_FILES) of pid {pid}, spawned ahead"))?;
    }
    puppets.order = ctx.tree.processes.iter().map(|p| p.pid).collect();
    Ok(puppets)
}

/// Stage 8 (with [`RestoreOptions::verify`]): the finished tree read
/// back and compared with its image, before any thread of it runs.
fn verify_tree(tree: &TreeImage, puppets: &Puppets, cgroups: &[PathBuf], ptys: &HashMap<u32, u32>) -> Result<()> {
    let hosts: HashMap<u32, i32> = puppets.by_pid.iter().map(|(&pid, p)| (pid, p.host)).collect();
    let files: HashMap<u32, &lpm_image::FileImage> = tree.files.iter().map(|f| (f.id, f)).collect();
    let pipes: HashMap<u64, &lpm_image::PipeImage> = tree.pipes.iter().map(|p| (p.id, p)).collect();
    let ghosts: HashMap<u64, &lpm_image::GhostImage> = tree.ghosts.iter().map(|g| (g.id, g)).collect();
    let procs: Vec<crate::verify::Restored<'_>> = tree
        .processes
        .iter()
        .map(|p| {
            let pp = &puppets.by_pid[&p.pid];
            crate::verify::Restored {
                image: p,
                host: pp.host,
                tids: &pp.tids,
                hosts: &hosts,
                cgroups,
                files: &files,
                pipes: &pipes,
                ghosts: &ghosts,
                processes: &tree.processes,
                shmems: &tree.shmems,
                ptys,
                dumped: false,
            }
        })
        .collect();
    crate::verify::tree(&procs)
}

/// Stage 2, files: every open file of the image, in the restorer. With a
/// namespace given for the root, its sockets must be born in it: the
/// files are opened from a thread inside that namespace, from a copy of
/// the tree in which the root's namespace is "here" (sockets of other
/// owned namespaces still enter theirs), and the puppets are then pointed
/// at the given namespace instead of a new one.
fn open_files(tree: &TreeImage, dir: &Path, given: Option<BorrowedFd<'_>>, shell_job: bool) -> Result<OpenFiles> {
    let Some(ns) = given else { return files::open_all(tree, dir, shell_job) };
    let root = root_of(tree);
    let owned = root.namespaces.as_ref().filter(|n| n.clone_flags & NEWNET != 0).ok_or_else(|| {
        EngineError::Incompatible("a network namespace was given for the restore, but the image's root does not own one".into())
    })?;
    let (key, lo_up) = (owned.net_ns, owned.lo_up);
    ns::restore_net_sysctls(ns, root.pid as i32, owned)?;
    let mut here = tree.clone();
    for p in here.processes.iter_mut().filter(|p| p.pid == tree.root_pid) {
        if let Some(n) = p.namespaces.as_mut() {
            n.clone_flags &= !NEWNET;
        }
    }
    for s in here.files.iter_mut().filter_map(|f| f.socket.as_mut()).filter(|s| s.net_ns == key) {
        s.net_ns = 0;
    }
    for n in here.files.iter_mut().filter_map(|f| f.ns.as_mut()).filter(|n| n.ns == key) {
        n.ns = 0;
    }
    if lo_up {
        ns::bring_lo_up(ns, root.pid as i32)?;
    }
    let mut open =
        lpm_sys::net::in_netns(ns, || files::open_all(&here, dir, shell_job)).step(0, || "enter the given network namespace".into())??;
    let own = ns.try_clone_to_owned().map_err(crate::io_err("duplicate the given network namespace"))?;
    open.net.insert(key, own);
    Ok(open)
}

fn root_of(tree: &TreeImage) -> &Process {
    tree.processes.iter().find(|p| p.pid == tree.root_pid).expect("checked")
}

fn ns_flags(p: &Process) -> u64 {
    p.namespaces.as_ref().map(|n| n.clone_flags).unwrap_or(0)
}

/// How many outer pid levels of every task the restore cannot choose:
/// one when the root founds its own pid namespace (its pid outside is
/// whatever the host gives), none otherwise.
fn free_levels(tree: &TreeImage) -> usize {
    usize::from(ns_flags(root_of(tree)) & libc::CLONE_NEWPID as u64 != 0)
}

/// The ids to ask clone3 for (set_tid, innermost namespace first) for a
/// task with these ids from the host's namespace inward.
fn set_tid(ids: &[u32], fallback: u32, skip: usize) -> Vec<u32> {
    let ids = if ids.is_empty() { std::slice::from_ref(&fallback) } else { ids };
    ids.iter().skip(skip).rev().copied().collect()
}

/// The pid a process sees for itself.
fn own_view(p: &Process) -> u32 {
    p.nspid.last().copied().unwrap_or(p.pid)
}

/// Stage 1: refuse an image this host cannot honour.
fn check(tree: &TreeImage) -> Result<()> {
    if tree.processes.is_empty() || tree.processes.iter().all(|p| p.pid != tree.root_pid) {
        return Err(EngineError::Incompatible("the image has no root process".into()));
    }
    // Before anything is made: the huge pages the tree's hugetlbfs areas
    // reserve must be free (hugetlb.rs).
    crate::hugetlb::check_free(&crate::hugetlb::needed(tree))?;
    if free_levels(tree) == 0 {
        for p in &tree.processes {
            for t in &p.threads {
                pid_free(t.tid as i32)?;
            }
        }
    }
    Ok(())
}

/// Fails when `pid` is in use. A zombie holding it is waited for a
/// moment: the tree a checkpoint just killed may still be waiting for its
/// reaper (an orphan's is pid 1, which reaps when it gets to it).
fn pid_free(pid: i32) -> Result<()> {
    let t = Instant::now();
    loop {
        let Ok(stat) = proc::Stat::read(pid) else { return Ok(()) };
        let dying = matches!(stat.state(), 'Z' | 'X');
        if !dying || t.elapsed() > Duration::from_secs(2) {
            let who = proc::read(pid, "comm").unwrap_or_default();
            let what = if dying { " a zombie nobody reaped in 2 s" } else { "" };
            return Err(EngineError::Incompatible(format!("pid {pid} is taken (by{what} {})", who.trim())));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Room the trampoline and the parking area take, with a margin.
const TRAMPOLINE_NEED: u64 = TRAMPOLINE_LEN + PARKING + (2 << 20);

/// Every area of every image address space, and the SysV segments.
fn image_areas(tree: &TreeImage) -> Vec<(u64, u64)> {
    let mut used: Vec<(u64, u64)> =
        tree.processes.iter().filter_map(|p| p.mm.as_ref()).flat_map(|mm| mm.vmas.iter().map(|v| (v.start, v.end))).collect();
    used.extend(ipc::reserved(tree));
    used
}

/// Whether a trampoline at `at` (and its parking area) overlaps none of
/// `used`.
fn range_free(used: &[(u64, u64)], at: u64) -> bool {
    let end = at + TRAMPOLINE_NEED;
    used.iter().all(|&(s, e)| e <= at || s >= end)
}

/// Picks an address free in every image address space and in ours (each
/// puppet starts as a copy of ours) for the trampoline and parking area.
fn choose_trampoline(tree: &TreeImage) -> Result<u64> {
    let mut used: Vec<(u64, u64)> = proc::maps(std::process::id() as i32)?.iter().map(|e| (e.start, e.end)).collect();
    used.extend(image_areas(tree));
    used.sort_unstable();
    let need = TRAMPOLINE_NEED;
    let mut best = None;
    let mut prev_end = 1u64 << 32;
    for &(s, e) in used.iter().chain(std::iter::once(&(0x7fff_f000_0000u64, 0x7fff_f000_0000u64))) {
        if s > prev_end && s - prev_end >= need && s <= 0x7fff_f000_0000 {
            best = Some((s - need + (1 << 20)) & !0xfff);
        }
        prev_end = prev_end.max(e);
    }
    best.ok_or_else(|| EngineError::Incompatible("no free address range for the restore trampoline".into()))
}

fn wait_new_stop(tid: i32) -> Result<()> {
    loop {
        match ptrace::wait(tid).step(tid, || "wait for new task to stop".into())?.1 {
            Stop::Event(ptrace::EVENT_STOP, _) | Stop::Signal(libc::SIGSTOP) => return Ok(()),
            Stop::Exited(_) | Stop::Killed(_) => {
                return Err(EngineError::Incompatible(format!("new task {tid} died before it could be shaped")))
            }
            _ => ptrace::cont(tid, 0).step(tid, || "continue new task".into())?,
        }
    }
}

/// Runs clone3 in a puppet for a new task with ids `ids` (innermost pid
/// namespace first); returns the new task's host id once it has stopped.
pub(crate) fn remote_clone3(r: &mut Remote, s: Scratch, mut args: CloneArgs, ids: &[u32], event: i32) -> Result<i32> {
    let host = r.tid();
    let tid = ids.first().copied().unwrap_or(0);
    let bytes: Vec<u8> = ids.iter().flat_map(|i| (*i as i32).to_le_bytes()).collect();
    // No ids: any pid (clone3 takes no array of none).
    args.set_tid = if ids.is_empty() { 0 } else { put(host, s, 512, &bytes)? };
    args.set_tid_size = ids.len() as u64;
    let a = put(host, s, 0, &args.to_bytes())?;
    r.call(libc::SYS_clone3, &[a, 88]).step(host, || format!("remote clone3 for task {tid}"))?;
    let new = r
        .events
        .iter()
        .find(|(ev, _)| *ev == event)
        .map(|(_, m)| *m as i32)
        .ok_or_else(|| EngineError::Incompatible(format!("clone3 of task {tid} reported no fork or clone event")))?;
    wait_new_stop(new)?;
    Ok(new)
}

/// Makes a newborn puppet a session or group leader if it was one, before
/// it has children (which inherit both); returns its group now.
fn lead(ctx: &Ctx, host: i32, base: ptrace::Regs, p: &Process, inherited: u32) -> Result<u32> {
    let mut r = ctx.remote(host, base);
    if p.sid == p.pid {
        r.call(libc::SYS_setsid, &[]).step(host, || format!("remote setsid in pid {}", p.pid))?;
        return Ok(p.pid);
    }
    if p.pgid == p.pid {
        r.call(libc::SYS_setpgid, &[0, 0]).step(host, || format!("remote setpgid(0, 0) in pid {}", p.pid))?;
        return Ok(p.pid);
    }
    Ok(inherited)
}

/// A network namespace is not cloned with its owner but created first, so
/// the sockets inside it exist before any puppet, and joined with setns.
const NEWNET: u64 = libc::CLONE_NEWNET as u64;

/// Stage 3: every process, parents first, with sessions and the groups
/// they lead or inherit.
fn spawn_tree(ctx: &Ctx, open: &OpenFiles, cgroups: &[PathBuf], vessel: Option<&Vessel>) -> Result<Puppets> {
    let tree = ctx.tree;
    let net = &open.net;
    let root = root_of(tree);
    let skip = free_levels(tree);
    let s = ctx.scratch();
    let host = match vessel {
        Some(v) => {
            // A sibling of the vessel (our child, as a root puppet is) in
            // the vessel's cgroups. A root that owns its mount namespace
            // takes the vessel's when the vessel made one ahead
            // ([`Vessel::own_mounts`]): a copy would be one more namespace
            // to tear down, an RCU grace period, when the vessel ends.
            let mounts = if v.own_mounts.load(std::sync::atomic::Ordering::SeqCst) { libc::CLONE_NEWNS as u64 } else { 0 };
            let shared = if ctx.ahead { libc::CLONE_FILES as u64 } else { 0 };
            let flags = (ns_flags(root) & !NEWNET & !mounts) | libc::CLONE_PARENT as u64 | shared;
            // clone3 takes the exit signal of a CLONE_PARENT child from the
            // caller (the vessel's: SIGCHLD) and refuses one given.
            let args = CloneArgs { flags, exit_signal: 0, ..Default::default() };
            let ids = set_tid(&root.nspid, root.pid, skip);
            // An exit signal other than SIGCHLD makes it a clone event.
            let host = remote_clone3(&mut ctx.remote(v.pid, v.base), s, args, &ids, libc::PTRACE_EVENT_CLONE);
            v.end();
            let host = host?;
            // As a spawned root puppet: it dies with us until the restore
            // gives it the image's own setting.
            let armed = ptrace::get_regs(host).step(host, || "read puppet registers".into()).and_then(|base| {
                ctx.remote(host, base)
                    .call(libc::SYS_prctl, &[libc::PR_SET_PDEATHSIG as u64, libc::SIGKILL as u64])
                    .step(host, || "remote PR_SET_PDEATHSIG".into())
            });
            if let Err(e) = armed {
                end(host);
                return Err(e);
            }
            host
        }
        None => {
            let ids: Vec<i32> = set_tid(&root.nspid, root.pid, skip).into_iter().map(|i| i as i32).collect();
            puppet::spawn_root(ns_flags(root) & !NEWNET, &ids, ctx.trampoline).step(root.pid as i32, || "spawn root puppet".into())?
        }
    };
    let mut puppets = Puppets { by_pid: HashMap::new(), order: vec![], armed: true, spaces: Vec::new() };
    let base = ptrace::get_regs(host).step(host, || "read puppet registers".into())?;
    puppets.by_pid.insert(root.pid, Puppet { host, base, tids: vec![host] });
    if vessel.is_none() {
        // Alone, single-threaded and childless: every task it will clone
        // inherits these.
        join_cgroups(host, "root puppet", cgroups)?;
    }
    ptrace::set_sigmask(host, !0).step(host, || "block signals".into())?;
    if let Some(n) = &root.namespaces {
        ns::join_net(host, &mut ctx.remote(host, base), n, net)?;
    }
    if ns_flags(root) & libc::CLONE_NEWNS as u64 != 0 {
        ns::isolate_mounts(host, &mut ctx.remote(host, base), s, root.namespaces.as_ref())?;
    }
    // The root inherits the restorer's session and group unless it led
    // its own.
    let mut group: HashMap<u32, u32> = HashMap::new();
    group.insert(root.pid, lead(ctx, host, base, root, 0)?);
    files::tty::give_ctty(host, &mut ctx.remote(host, base), root, open)?;
    grow(ctx, open, root, &[], &mut puppets, &mut group)?;
    if let Some(p) = tree.processes.iter().find(|p| !puppets.by_pid.contains_key(&p.pid)) {
        return Err(EngineError::Incompatible(format!("process {} has parent {}, which is not in the image", p.pid, p.ppid)));
    }
    puppets.order = tree.processes.iter().map(|p| p.pid).collect();
    Ok(puppets)
}

/// Lays out `p`'s address space (phase 1 of its memory, mem::layout),
/// then forks its children one by one, each once `p` holds the pages
/// that child shares with it or below it (cow.rs), and grows each child
/// the same way before the next: memory shared copy-on-write since a
/// fork is shared again only by forking.
/// `inherited`: what `p` keeps of the areas it was forked with
/// ([`mem::inheritable`]).
fn grow(
    ctx: &Ctx,
    open: &OpenFiles,
    p: &Process,
    inherited: &[(u64, u64)],
    puppets: &mut Puppets,
    group: &mut HashMap<u32, u32>,
) -> Result<()> {
    let s = ctx.scratch();
    let skip = free_levels(ctx.tree);
    let (host, base) = {
        let pp = &puppets.by_pid[&p.pid];
        (pp.host, pp.base)
    };
    let steps = ctx.plan.of(p.pid);
    let mm = p.mm.as_ref().filter(|_| p.zombie.is_none());
    if let Some(mm) = mm {
        mem::layout(&mem::RestoreCtx { inherited, ..ctx.mem(p, host) }, &mut ctx.remote(host, base), s, mm)?;
    }
    // What it holds pages in: what it keeps of its parent's, and the
    // shared pages written before each fork.
    let mut held: Vec<(u64, u64)> = steps.kept.clone();
    for (i, c) in steps.children.iter().enumerate() {
        let child_img = ctx
            .tree
            .processes
            .iter()
            .find(|q| q.pid == *c)
            .ok_or_else(|| EngineError::Incompatible(format!("process {} has a child {c} the image lacks", p.pid)))?;
        if let (Some(mm), Some(writes)) = (mm, steps.before.get(i)) {
            mem::write_shared(host, mm, &ctx.sources, writes)?;
            held.extend(writes.iter().map(|&(v, _)| (v, v + crate::PAGE)));
        }
        // CLONE_FILES before any table is shaped: the child shares what its
        // parent will install (shape skips the child's own install).
        let files = if child_img.shares_parent_files || ctx.ahead { libc::CLONE_FILES as u64 } else { 0 };
        let args = CloneArgs { flags: (ns_flags(child_img) & !NEWNET) | files, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
        let ids = set_tid(&child_img.nspid, child_img.pid, skip);
        let child = remote_clone3(&mut ctx.remote(host, base), s, args, &ids, libc::PTRACE_EVENT_FORK)?;
        let cbase = ptrace::get_regs(child).step(child, || "read puppet registers".into())?;
        puppets.by_pid.insert(child_img.pid, Puppet { host: child, base: cbase, tids: vec![child] });
        if let Some(n) = &child_img.namespaces {
            ns::join_net(child, &mut ctx.remote(child, cbase), n, &open.net)?;
        }
        if ns_flags(child_img) & libc::CLONE_NEWNS as u64 != 0 {
            ns::isolate_mounts(child, &mut ctx.remote(child, cbase), s, child_img.namespaces.as_ref())?;
        }
        let inherited = group[&p.pid];
        let led = lead(ctx, child, cbase, child_img, inherited)?;
        group.insert(child_img.pid, led);
        files::tty::give_ctty(child, &mut ctx.remote(child, cbase), child_img, open)?;
        let inherits = match (mm, child_img.mm.as_ref().filter(|_| child_img.zombie.is_none())) {
            (Some(pm), Some(cm)) => mem::inheritable(pm, cm, &held, &ctx.plan.of(child_img.pid).kept),
            _ => Vec::new(),
        };
        grow(ctx, open, child_img, &inherits, puppets, group)?;
    }
    if let Some(mm) = mm {
        mem::write_shared(host, mm, &ctx.sources, &steps.last)?;
    }
    Ok(())
}

/// A process as the rules of sessions and groups see it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Member {
    pub(crate) pid: u32,
    pub(crate) ppid: u32,
    pub(crate) pgid: u32,
    pub(crate) sid: u32,
}

impl Member {
    /// The members of the running or stopped tree `pids` (root first),
    /// from /proc/PID/stat; a process gone meanwhile is left out.
    pub(crate) fn read(pids: &[i32]) -> Vec<Member> {
        pids.iter()
            .filter_map(|&pid| {
                let st = proc::Stat::read(pid).ok()?;
                let ppid = st.num(4) as u32;
                let ppid = if pids.contains(&(ppid as i32)) { ppid } else { 0 };
                Some(Member { pid: pid as u32, ppid, pgid: st.num(5) as u32, sid: st.num(6) as u32 })
            })
            .collect()
    }
}

/// Whether `pid` is a process outside the tree `pids`.
pub(crate) fn outside_tree(pids: &[i32], pid: u32) -> bool {
    !pids.contains(&(pid as i32)) && Path::new(&format!("/proc/{pid}")).exists()
}

/// Refuses the sessions and process groups [`spawn_tree`] and [`groups`]
/// cannot make again; rule of the dump and the inspection. A process is
/// cloned from its parent, so it starts in its parent's session: it may
/// only lead a session of its own or stay in its parent's (setsid is the
/// only way into a session, and makes a new one). A group is led at birth,
/// joined from a leader in the tree, or, when its leader has exited,
/// made again by a helper with the leader's pid (which the kernel keeps
/// for the group). `outside` says whether a pid is a live process outside
/// the tree (a group it leads cannot be made here).
pub(crate) fn check_groups(members: &[Member], root: u32, outside: impl Fn(u32) -> bool) -> Result<()> {
    let by_pid: HashMap<u32, &Member> = members.iter().map(|m| (m.pid, m)).collect();
    let Some(r) = by_pid.get(&root) else { return Ok(()) };
    let refuse = |m: &Member, what: String| Err(EngineError::Unsupported { pid: m.pid as i32, kind: "process tree", what });
    for m in members.iter().filter(|m| m.pid != root) {
        let Some(parent) = by_pid.get(&m.ppid) else { continue };
        if m.sid != m.pid && m.sid != parent.sid {
            return refuse(
                m,
                format!(
                    "in session {}, which its parent {} (in session {}) is not in: a restored process starts in its parent's session",
                    m.sid, m.ppid, parent.sid
                ),
            );
        }
        let led = by_pid.contains_key(&m.pgid) || (m.pgid == r.pgid && m.sid == r.sid);
        if led {
            continue;
        }
        if outside(m.pgid) {
            return refuse(m, format!("in process group {}, led by a process outside the tree", m.pgid));
        }
    }
    Ok(())
}

/// Stage 4: process groups that are neither led nor inherited (joined
/// from a sibling or a later process), once every leader exists; groups
/// whose leader has exited are made again first ([`leaderless_group`]).
/// The root's group, when it came from outside the tree, is the one the
/// root inherits from the restorer: its other members join that.
fn groups(ctx: &Ctx, puppets: &Puppets) -> Result<()> {
    let procs = &ctx.tree.processes;
    let by_pid: HashMap<u32, &Process> = procs.iter().map(|p| (p.pid, p)).collect();
    let root = root_of(ctx.tree);
    // What each process's group is after spawn_tree: led, or inherited
    // down the tree.
    let mut now: HashMap<u32, u32> = HashMap::new();
    for p in procs {
        let g = if p.sid == p.pid || p.pgid == p.pid {
            p.pid
        } else if p.pid == root.pid {
            // The restorer's group, which stands for the root's outer one.
            root.pgid
        } else {
            by_pid.get(&p.ppid).and_then(|q| now.get(&q.pid)).copied().unwrap_or(0)
        };
        now.insert(p.pid, g);
    }
    let outer = |p: &Process| p.pid != root.pid && p.pgid == root.pgid && !by_pid.contains_key(&p.pgid);
    let mut leaderless: Vec<u32> =
        procs.iter().filter(|p| !by_pid.contains_key(&p.pgid) && !outer(p) && p.pid != root.pid).map(|p| p.pgid).collect();
    leaderless.sort_unstable();
    leaderless.dedup();
    for g in leaderless {
        let members: Vec<&Process> = procs.iter().filter(|p| p.pgid == g).collect();
        leaderless_group(ctx, puppets, g, &members)?;
    }
    for p in procs.iter().filter(|p| now[&p.pid] != p.pgid && (by_pid.contains_key(&p.pgid) || outer(p))) {
        // setpgid runs inside, where the group is named as the member sees
        // its leader; the root's outer group by its id now.
        let view = match by_pid.get(&p.pgid) {
            Some(l) if l.nspid.len() != p.nspid.len() => {
                return Err(EngineError::Incompatible(format!("process {} joins group {} led from another pid namespace", p.pid, p.pgid)))
            }
            Some(l) => own_view(l) as u64,
            None => proc::Stat::read(puppets.by_pid[&root.pid].host)?.num(5),
        };
        if now[&p.pid] as u64 == view {
            continue;
        }
        let pp = &puppets.by_pid[&p.pid];
        ctx.remote(pp.host, pp.base)
            .call(libc::SYS_setpgid, &[0, view])
            .step(pp.host, || format!("remote setpgid({}) in pid {}", p.pgid, p.pid))?;
    }
    Ok(())
}

/// Stage 4, after the groups: controlling terminals' foreground groups,
/// and terminals let go. Each process was born with its parent's terminal
/// (a session leader with its own, given at birth), which is what the
/// kernel's fork did for it then.
fn terminals(ctx: &Ctx, puppets: &Puppets, open: &OpenFiles) -> Result<()> {
    files::tty::settle_user_terminal(ctx.tree, open, |pid| puppets.by_pid.get(&pid).map(|p| p.host))?;
    if open.ctty.is_empty() {
        return Ok(());
    }
    let mut born: HashMap<u32, Option<u32>> = HashMap::new();
    for p in &ctx.tree.processes {
        let inherited = if p.sid == p.pid { None } else { born.get(&p.ppid).copied().flatten() };
        born.insert(p.pid, if p.sid == p.pid { p.ctty } else { inherited });
        let pp = &puppets.by_pid[&p.pid];
        files::tty::settle_ctty(pp.host, &mut ctx.remote(pp.host, pp.base), ctx.scratch(), p, inherited, ctx.tree, open)?;
    }
    Ok(())
}

/// Makes process group `g`, whose leader had exited, for `members` (all
/// in one session, as the kernel keeps groups): a helper with the
/// leader's pid (in every pid namespace: `Process::nspgid`), cloned from
/// the first member, leads a new group and the members join it; the helper then exits and the member reaps it (a
/// remote wait4), taking back the SIGCHLD it sent (every puppet has its
/// signals blocked, so it waits among the pending ones). The group lives
/// on with its members, its id held by them.
fn leaderless_group(ctx: &Ctx, puppets: &Puppets, g: u32, members: &[&Process]) -> Result<()> {
    let first = members.first().ok_or_else(|| EngineError::Incompatible(format!("process group {g} has no member")))?;
    if first.nspgid.len() != first.nspid.len() && first.nspid.len() > 1 {
        return Err(EngineError::Incompatible(format!(
            "process group {g} of pid {} lost its leader inside a pid namespace, and the image does not record its id there",
            first.pid
        )));
    }
    let fp = &puppets.by_pid[&first.pid];
    let s = ctx.scratch();
    let mut fr = ctx.remote(fp.host, fp.base);
    let args = CloneArgs { flags: 0, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    let helper = remote_clone3(&mut fr, s, args, &set_tid(&first.nspgid, g, free_levels(ctx.tree)), libc::PTRACE_EVENT_FORK)?;
    // The group as the members see it.
    let g_in = first.nspgid.last().copied().unwrap_or(g) as u64;
    let made = (|| -> Result<()> {
        let base = ptrace::get_regs(helper).step(helper, || "read group helper registers".into())?;
        ctx.remote(helper, base)
            .call(libc::SYS_setpgid, &[0, 0])
            .step(helper, || format!("remote setpgid(0, 0) in helper of group {g}"))?;
        for m in members {
            let mp = &puppets.by_pid[&m.pid];
            ctx.remote(mp.host, mp.base)
                .call(libc::SYS_setpgid, &[0, g_in])
                .step(mp.host, || format!("remote setpgid({g}) in pid {}", m.pid))?;
        }
        zombie::exit_now(helper, base, ctx.trampoline)
    })();
    if let Err(e) = made {
        lpm_sys::misc::kill(helper, libc::SIGKILL);
        return Err(e);
    }
    fr.call(libc::SYS_wait4, &[g_in, 0, 0, 0]).step(fp.host, || format!("remote wait4({g}) for the helper of group {g}"))?;
    let set = put(fp.host, s, 0, &(1u64 << (libc::SIGCHLD - 1)).to_le_bytes())?;
    let ts = put(fp.host, s, 8, &[0u8; 16])?;
    let got = fr.raw(libc::SYS_rt_sigtimedwait, &[set, 0, ts, 8]).step(fp.host, || "remote rt_sigtimedwait(SIGCHLD)".into())?;
    if got != libc::SIGCHLD as i64 {
        return Err(EngineError::Incompatible(format!(
            "pid {}: the SIGCHLD of the helper of group {g} did not arrive (rt_sigtimedwait returned {got})",
            first.pid
        )));
    }
    Ok(())
}

/// Enters the /proc directory of an exited process N (`Process::cwd_proc_pid`)
/// as the working directory of puppet `host`, once the tree's /proc is in
/// place (a partition's is attached after every process is shaped): a helper with pid N in the
/// puppet's pid namespace is cloned from it, the puppet enters
/// /proc/N, then the helper exits and the puppet reaps it (a remote
/// wait4, taking back the SIGCHLD it sent), which leaves the directory
/// as it was, "/proc/N (deleted)". Fails by name when N is taken.
fn proc_cwd(ctx: &Ctx, host: i32, base: ptrace::Regs, p: &Process) -> Result<()> {
    let n = p.cwd_proc_pid;
    let s = ctx.scratch();
    let mut r = ctx.remote(host, base);
    let args = CloneArgs { flags: 0, exit_signal: libc::SIGCHLD as u64, ..Default::default() };
    let helper = remote_clone3(&mut r, s, args, &[n], libc::PTRACE_EVENT_FORK).map_err(|e| {
        EngineError::Incompatible(format!("pid {}: a helper with pid {n}, whose /proc directory is its working directory: {e}", p.pid))
    })?;
    let entered = (|| -> Result<()> {
        let addr = task::put_path(host, s, 0, &format!("/proc/{n}"))?;
        r.call(libc::SYS_chdir, &[addr]).step(host, || format!("remote chdir(/proc/{n})"))?;
        let hbase = ptrace::get_regs(helper).step(helper, || "read cwd helper registers".into())?;
        zombie::exit_now(helper, hbase, ctx.trampoline)
    })();
    if let Err(e) = entered {
        lpm_sys::misc::kill(helper, libc::SIGKILL);
        return Err(e);
    }
    r.call(libc::SYS_wait4, &[n as u64, 0, 0, 0]).step(host, || format!("remote wait4({n}) for the cwd helper"))?;
    let set = put(host, s, 0, &(1u64 << (libc::SIGCHLD - 1)).to_le_bytes())?;
    let ts = put(host, s, 8, &[0u8; 16])?;
    let got = r.raw(libc::SYS_rt_sigtimedwait, &[set, 0, ts, 8]).step(host, || "remote rt_sigtimedwait(SIGCHLD)".into())?;
    if got != libc::SIGCHLD as i64 {
        return Err(EngineError::Incompatible(format!(
            "pid {}: the SIGCHLD of the cwd helper {n} did not arrive (rt_sigtimedwait returned {got})",
            p.pid
        )));
    }
    Ok(())
}

/// What shaping one process made: its threads' host tids (leader
/// first), its address space for the lazy fill, and the connections it
/// holds first that stay in repair mode.
#[derive(Default)]
struct Shaped {
    tids: Vec<i32>,
    space: Option<crate::lazy::Space>,
    deferred: Vec<files::Deferred>,
}

/// Stage 5 for every process, on up to [`shape_threads`] tracer threads.
///
/// Each process's shaping touches only its own puppet (its address space,
/// its descriptor table, its threads), so independent processes are
/// shaped side by side. What orders them: a process that shares its
/// parent's descriptor table is shaped after the parent, on the same
/// thread, as the sequential restore does (the parent installs the
/// table); a connection stays deferred from the first puppet holding it
/// in image order (the lists are merged in that order). ptrace requests
/// must come from the tracer thread, so each puppet handed to another
/// thread is let go in a pause(2) and seized there
/// ([`lpm_sys::remote::hand_off`]), and handed back the same way before
/// the stages that follow; the calling thread shapes its own share
/// meanwhile, without a handover. Zombies (which exit through their
/// parents) and single-process trees take the sequential path.
fn shape_all(ctx: &Ctx, puppets: &mut Puppets, open: &OpenFiles, deferred: Option<&mut Vec<files::Deferred>>) -> Result<()> {
    let defer = deferred.is_some();
    let hosts: HashMap<u32, i32> = puppets.by_pid.iter().map(|(&pid, q)| (pid, q.host)).collect();
    let shares = shape_shares(ctx.tree, shape_threads(ctx.tree));
    let mut done: HashMap<u32, Shaped> = HashMap::new();
    if shares.len() <= 1 {
        for p in &ctx.tree.processes {
            let pp = &puppets.by_pid[&p.pid];
            done.insert(p.pid, shape(ctx, &hosts, pp.host, pp.base, p, open, defer)?);
        }
    } else {
        let t0 = Instant::now();
        let opts = ptrace::OPTIONS;
        // Handed over before any share starts, so no thread seizes a
        // puppet still traced here.
        for &pid in shares.iter().skip(1).flatten() {
            let pp = &puppets.by_pid[&pid];
            lpm_sys::remote::hand_off(pp.host, ctx.trampoline, &pp.base).step(pp.host, || "hand the puppet to a shaping thread".into())?;
        }
        let failed = std::sync::atomic::AtomicBool::new(false);
        let work = |share: &[u32], handed: bool| -> Vec<(u32, Result<Shaped>)> {
            let mut out = Vec::new();
            for &pid in share {
                if failed.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let p = ctx.tree.processes.iter().find(|q| q.pid == pid).expect("in the image");
                let pp = &puppets.by_pid[&pid];
                let t = Instant::now();
                let mut r = Ok(());
                if handed {
                    r = lpm_sys::remote::take_over(pp.host, opts).step(pp.host, || "take the puppet over for shaping".into());
                }
                let mut r = r.and_then(|()| shape(ctx, &hosts, pp.host, pp.base, p, open, defer));
                if handed {
                    // Back to the restoring thread, every thread of it,
                    // with the registers their calls start from.
                    if let Ok(sh) = &r {
                        for &tid in &sh.tids {
                            if let Err(e) = lpm_sys::remote::hand_off(tid, ctx.trampoline, &pp.base) {
                                r = Err(e).step(tid, || "hand the shaped thread back".into());
                                break;
                            }
                        }
                    }
                }
                tracing::debug!(pid, host = pp.host, handed, ms = t.elapsed().as_secs_f64() * 1e3, ok = r.is_ok(), "process shaped");
                if r.is_err() {
                    failed.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                out.push((pid, r));
            }
            out
        };
        // A thread that ends while it traces a puppet kills it
        // (PTRACE_O_EXITKILL): a failed share leaves nothing half made
        // running; the rest is killed with the puppets.
        let results: Vec<(u32, Result<Shaped>)> = std::thread::scope(|sc| {
            let others: Vec<_> = shares[1..].iter().map(|share| sc.spawn(|| work(share, true))).collect();
            let mut all = work(&shares[0], false);
            for h in others {
                match h.join() {
                    Ok(v) => all.extend(v),
                    Err(_) => all.push((0, Err(EngineError::Incompatible("a shaping thread panicked".into())))),
                }
            }
            all
        });
        let mut first_err = None;
        for (pid, r) in results {
            match r {
                Ok(sh) => {
                    done.insert(pid, sh);
                }
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        for &pid in shares.iter().skip(1).flatten() {
            for &tid in &done[&pid].tids {
                lpm_sys::remote::take_over(tid, opts).step(tid, || "take the shaped thread back".into())?;
            }
        }
        tracing::debug!(threads = shares.len(), ms = t0.elapsed().as_secs_f64() * 1e3, "processes shaped in parallel");
    }
    // In image order, as the sequential restore would have made them.
    let mut deferred = deferred;
    for p in &ctx.tree.processes {
        let sh = done.remove(&p.pid).expect("every process shaped");
        if let Some(space) = sh.space {
            puppets.spaces.push(space);
        }
        if let Some(list) = deferred.as_deref_mut() {
            for d in sh.deferred {
                if !list.iter().any(|x| x.file.id == d.file.id) {
                    list.push(d);
                }
            }
        }
        if p.zombie.is_none() {
            puppets.by_pid.get_mut(&p.pid).expect("spawned").tids = sh.tids;
        }
    }
    Ok(())
}

/// How many threads shape processes side by side: one per CPU
/// (`LPM_RESTORE_THREADS` in the environment overrides it, 1 for the
/// sequential restore, for comparisons), never more than 8. A tree with
/// a zombie is shaped in turn (a zombie exits through its parent).
fn shape_threads(tree: &TreeImage) -> usize {
    if tree.processes.iter().any(|p| p.zombie.is_some()) {
        return 1;
    }
    let n = std::env::var("LPM_RESTORE_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    n.clamp(1, 8)
}

/// Splits the tree's processes into at most `n` shares of about equal
/// work (areas, descriptors and threads: the remote calls each costs),
/// each in image order. A process sharing its parent's descriptor table
/// goes with its parent (see [`shape_all`]).
fn shape_shares(tree: &TreeImage, n: usize) -> Vec<Vec<u32>> {
    // Chains of processes that must be shaped in turn, by their first.
    let mut chain_of: HashMap<u32, usize> = HashMap::new();
    let mut chains: Vec<Vec<u32>> = Vec::new();
    for p in &tree.processes {
        match chain_of.get(&p.ppid).copied().filter(|_| p.shares_parent_files) {
            Some(c) => {
                chains[c].push(p.pid);
                chain_of.insert(p.pid, c);
            }
            None => {
                chain_of.insert(p.pid, chains.len());
                chains.push(vec![p.pid]);
            }
        }
    }
    let cost = |pid: u32| {
        let p = tree.processes.iter().find(|q| q.pid == pid).expect("in the image");
        1 + p.mm.as_ref().map_or(0, |m| m.vmas.len()) + p.fds.len() + 4 * p.threads.len()
    };
    let n = n.min(chains.len()).max(1);
    let mut order: Vec<(usize, usize)> = chains.iter().enumerate().map(|(i, c)| (c.iter().map(|&p| cost(p)).sum(), i)).collect();
    // Longest first, each to the least loaded share.
    order.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut load = vec![0usize; n];
    let mut picked: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (c, i) in order {
        let k = (0..n).min_by_key(|&k| (load[k], k)).expect("one share at least");
        load[k] += c;
        picked[k].push(i);
    }
    picked
        .into_iter()
        .filter(|v| !v.is_empty())
        .map(|v| {
            let mut pids: Vec<u32> = v.into_iter().flat_map(|i| chains[i].clone()).collect();
            // Parents come before their children in the image.
            pids.sort_by_key(|&pid| tree.processes.iter().position(|p| p.pid == pid));
            pids
        })
        .collect()
}

/// Stage 5: memory, descriptors, process state and threads of one process
/// (puppet `host`, whose calls start from `base`).
fn shape(
    ctx: &Ctx,
    hosts: &HashMap<u32, i32>,
    host: i32,
    base: ptrace::Regs,
    p: &Process,
    open: &OpenFiles,
    defer: bool,
) -> Result<Shaped> {
    let s = ctx.scratch();
    let mut r = ctx.remote(host, base);
    let mut shaped = Shaped::default();
    if p.zombie.is_some() {
        zombie::shape(host, &mut r, s, p, open.core.as_ref().map(|c| c.fd()))?;
        return Ok(shaped);
    }
    let t0 = Instant::now();
    if let Some(mm) = &p.mm {
        shaped.space = mem::finish(&ctx.mem(p, host), &mut r, s, mm)?;
    }
    let mem_ms = t0.elapsed().as_secs_f64() * 1e3;
    ipc::attach(host, &mut r, p)?;
    // A dead process's /proc directory is entered once the tree's /proc
    // is in place ([`proc_cwd`]).
    if p.cwd_proc_pid == 0 {
        task::restore_cwd(host, &mut r, s, p, &ctx.ghosts)?;
    }
    // A table shared with the parent was installed by the parent, shaped
    // first (parents come first in the image).
    if !p.shares_parent_files {
        files::restore(host, &mut r, &p.fds, open)?;
    }
    let host_of = |pid: u32| hosts.get(&pid).copied();
    let deferred = defer.then_some(&mut shaped.deferred);
    files::install(host, &mut r, s, p, ctx.tree, deferred, &files::Restorer { host_of: &host_of, core: open.core.as_ref() })?;
    locks::restore(host, &mut r, s, p)?;
    task::restore_process(host, &mut r, s, p)?;
    const THREAD: u64 =
        (libc::CLONE_VM | libc::CLONE_FS | libc::CLONE_FILES | libc::CLONE_SIGHAND | libc::CLONE_THREAD | libc::CLONE_SYSVSEM) as u64;
    // The leader first: the threads cloned from it inherit its name, nice
    // value and timer slack.
    let leader = p.threads.first().ok_or_else(|| EngineError::Incompatible(format!("process {} has no threads", p.pid)))?;
    task::restore_thread(host, own_view(p), host, &mut r, s, leader, None)?;
    let mut tids = vec![host];
    for t in p.threads.iter().skip(1) {
        let args = CloneArgs { flags: THREAD, ..Default::default() };
        let new = remote_clone3(&mut r, s, args, &set_tid(&t.nstid, t.tid, free_levels(ctx.tree)), libc::PTRACE_EVENT_CLONE)?;
        tids.push(new);
    }
    // A second pass rather than one per clone: resuming the same tracee
    // again and again is much cheaper than alternating between two.
    let nnp = p.prctl.as_ref().is_some_and(|x| x.no_new_privs);
    for (t, &tid) in p.threads.iter().zip(&tids).skip(1) {
        let mut tr = ctx.remote(tid, base);
        task::restore_thread(host, own_view(p), tid, &mut tr, s, t, Some(leader))?;
        // no_new_privs is per thread; the leader's is set with its
        // credentials, last (it can never be cleared again).
        if nnp {
            tr.call(libc::SYS_prctl, &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0]).step(tid, || "remote PR_SET_NO_NEW_PRIVS".into())?;
        }
    }
    timers::restore(host, &mut r, s, p)?;
    tracing::debug!(
        pid = p.pid,
        mem_ms,
        rest_ms = t0.elapsed().as_secs_f64() * 1e3 - mem_ms,
        areas = p.mm.as_ref().map_or(0, |m| m.vmas.len()),
        fds = p.fds.len(),
        threads = tids.len(),
        "process shape steps"
    );
    shaped.tids = tids;
    Ok(shaped)
}

/// Stage 6, end: zombies exit with their recorded status, once every other
/// process is complete (nothing later needs them alive) and while their
/// parents are still stopped, so the SIGCHLD each exit sends can be taken
/// back (zombie.rs).
fn zombies(ctx: &Ctx, puppets: &Puppets, open: &OpenFiles) -> Result<()> {
    for p in ctx.tree.processes.iter().filter(|p| p.zombie.is_some()) {
        let (pp, parent) = (&puppets.by_pid[&p.pid], &puppets.by_pid[&p.ppid]);
        let parent_img = ctx.tree.processes.iter().find(|q| q.pid == p.ppid).expect("spawned from it");
        let z = zombie::Exiting {
            p,
            host: pp.host,
            base: pp.base,
            parent: parent_img,
            parent_remote: ctx.remote(parent.host, parent.base),
            syscall_ip: ctx.trampoline,
            remote: ctx.remote(pp.host, pp.base),
            core: open.core.as_ref(),
        };
        zombie::exit(z, ctx.scratch())?;
    }
    Ok(())
}

/// Stage 7: final registers, trampoline gone; returns the threads to
/// detach together (stage 8, [`Held::release`]).
fn finish(ctx: &Ctx, puppets: &Puppets) -> Result<Vec<i32>> {
    for p in ctx.tree.processes.iter().filter(|p| p.zombie.is_none()) {
        let pp = &puppets.by_pid[&p.pid];
        let mut r = ctx.remote(pp.host, pp.base);
        // Set last: until now the root puppet dies with the restorer, so a
        // crashed restore leaves nothing behind.
        let pdeathsig = p.prctl.as_ref().map(|x| x.pdeathsig).unwrap_or(0);
        r.call(libc::SYS_prctl, &[libc::PR_SET_PDEATHSIG as u64, pdeathsig as u64]).step(pp.host, || "remote PR_SET_PDEATHSIG".into())?;
        // The trampoline goes last, from itself: the call returns to a
        // syscall-exit stop, and the thread is parked before it could run
        // the missing code.
        let mut r = r.without_trap();
        r.call(libc::SYS_munmap, &[ctx.trampoline, TRAMPOLINE_LEN]).step(pp.host, || "remote munmap trampoline".into())?;
        for (t, &tid) in p.threads.iter().zip(&pp.tids) {
            let regs = ptrace::regs_from_bytes(&t.gpregs)
                .ok_or_else(|| EngineError::Incompatible(format!("thread {} has {} bytes of registers", t.tid, t.gpregs.len())))?;
            // From a stop inside the signal path the kernel completes a
            // syscall the thread was in at checkpoint (restart, or EINTR
            // if a handler runs first); every signal is still blocked, so
            // none can take the place of the interrupt here.
            park(tid).step(tid, || "park before the final registers".into())?;
            ptrace::set_xstate(tid, &t.xstate).step(tid, || "write xstate".into())?;
            ptrace::set_regs(tid, &regs).step(tid, || "write registers".into())?;
            ptrace::set_sigmask(tid, t.sigmask).step(tid, || "write sigmask".into())?;
            task::restore_sched(tid, t)?;
        }
        if p.stop_signal != 0 {
            // Pending for the whole process (no thread takes it while
            // traced), it is taken by the first thread released, which
            // stops the group before any thread reaches user space.
            lpm_sys::misc::signal_process(pp.host, p.stop_signal as i32)
                .step(pp.host, || format!("stop it again with signal {}", p.stop_signal))?;
        }
    }
    let zombie = |pid: &u32| ctx.tree.processes.iter().any(|p| p.pid == *pid && p.zombie.is_some());
    Ok(puppets.order.iter().filter(|pid| !zombie(pid)).flat_map(|pid| puppets.by_pid[pid].tids.iter().copied()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pid: u32, ppid: u32, pgid: u32, sid: u32) -> Member {
        Member { pid, ppid, pgid, sid }
    }

    /// Which sessions and groups the restore can make again.
    #[test]
    fn sessions_and_groups_it_cannot_make_are_refused() {
        // Root 10 in a session and group from outside (5); 11 leads its own
        // session; 12 is in 11's group and session; 13 is in group 20,
        // whose leader exited; 14 in the root's outer group.
        let ok = [m(10, 0, 5, 5), m(11, 10, 11, 11), m(12, 11, 11, 11), m(13, 10, 20, 5), m(14, 10, 5, 5)];
        check_groups(&ok, 10, |_| false).unwrap();
        // A double fork's daemon: in the session of a leader that exited,
        // adopted by the root.
        let daemon = [m(10, 0, 10, 10), m(13, 10, 12, 12)];
        let e = check_groups(&daemon, 10, |_| false).unwrap_err().to_string();
        assert!(e.contains("pid 13") && e.contains("session 12"), "{e}");
        // The leader of 13's group lives outside the tree.
        let e = check_groups(&ok, 10, |pid| pid == 20).unwrap_err().to_string();
        assert!(e.contains("pid 13") && e.contains("outside the tree"), "{e}");
    }

    fn proc_of(pid: u32, ppid: u32, fds: usize, shares: bool) -> Process {
        let fds = (0..fds).map(|i| lpm_image::Fd { fd: i as u32, ..Default::default() }).collect();
        let threads = vec![lpm_image::Thread::default()];
        Process { pid, ppid, fds, threads, shares_parent_files: shares, ..Default::default() }
    }

    /// The shares of the parallel shaping: balanced, every process once,
    /// image order within a share, a table's sharers with its owner.
    #[test]
    fn shares_are_balanced_and_keep_table_sharers_together() {
        // A master (10) with a big table, workers 11..=16; 17 shares 11's
        // table, 18 shares 17's.
        let mut procs = vec![proc_of(10, 0, 40, false)];
        procs.extend((11..=16).map(|pid| proc_of(pid, 10, 5, false)));
        procs.push(proc_of(17, 11, 5, true));
        procs.push(proc_of(18, 17, 5, true));
        let tree = TreeImage { processes: procs, ..Default::default() };
        let shares = shape_shares(&tree, 2);
        assert_eq!(shares.len(), 2);
        let mut all: Vec<u32> = shares.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (10..=18).collect::<Vec<u32>>());
        for share in &shares {
            let pos = |pid: u32| tree.processes.iter().position(|p| p.pid == pid).unwrap();
            assert!(share.windows(2).all(|w| pos(w[0]) < pos(w[1])), "{share:?} out of image order");
        }
        let with = |pid: u32| shares.iter().position(|s| s.contains(&pid)).unwrap();
        assert_eq!(with(11), with(17));
        assert_eq!(with(17), with(18));
        // The master alone weighs about as much as the workers together.
        assert_ne!(with(10), with(12));
        // One thread, or one process: one share.
        assert_eq!(shape_shares(&tree, 1).len(), 1);
        let one = TreeImage { processes: vec![proc_of(10, 0, 3, false)], ..Default::default() };
        assert_eq!(shape_shares(&one, 4), vec![vec![10]]);
    }
}
