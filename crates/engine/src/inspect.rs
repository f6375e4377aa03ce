//! Inspection: the checkpoint's refusal rules applied to a running tree,
//! without stopping it, so that a migration refuses a partition it could
//! not move before it starts rather than at the stop after pre-copy.
//!
//! Every rule is the dump's own code: each kind of open file has
//! [`crate::files::Kind::check`], which runs what the kind's dump runs
//! before it records anything; memory areas go through `mem::classify`,
//! namespaces through `ns::dump`, zombies through `zombie::check`, and
//! SysV IPC, seccomp, file locks and POSIX timers through the rule
//! functions their dumps call. Only what can be read without changing the
//! tree is read: /proc (fd links, fdinfo, smaps, status, timers, the
//! syscall a thread sleeps in), sock_diag and getsockopt on copies of
//! the tree's sockets (pidfd_getfd), read-only ioctls. No thread is
//! seized or stopped.
//!
//! What only a stopped tree shows stays with the dump: what a TCP
//! connection's queues hold (read in repair mode), a unix socket's queued
//! messages (read with a peek offset), the content of seccomp filters of
//! equal length, and SysV objects' contents. The tree also runs on: a
//! refusal seen now may be gone at the stop, and state made after the
//! inspection is not seen. [`Refusal::transient`] marks the refusals of
//! a passing state (data queued, a connection waiting to be accepted, a
//! lock request waiting).

use std::time::{Duration, Instant};

use crate::dump::DumpOptions;
use crate::files::{self, FileTable};
use crate::proc::{self, Stat, Status};
use crate::stop;
use crate::{ipc, locks, mem, ns, seccomp, task, timers, zombie, EngineError, Result};

/// One thing the checkpoint would refuse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The process (host pid).
    pub pid: i32,
    /// The kind of resource: "file descriptor", "memory area",
    /// "namespace", "network namespace", "mount", "file lock", "seccomp",
    /// "POSIX timer", "SysV IPC", "zombie", "memory layout" or
    /// "process tree".
    pub kind: &'static str,
    /// Which one and why, as the checkpoint's error says it: `fd 3 ->
    /// socket:[123]: packet socket`, `0x7f..-0x7f.. rw-s "/dev/fb0":
    /// mapping of a device or special file`, ...
    pub what: String,
    /// The state refused may pass by itself (data queued, a connection
    /// waiting in an accept queue, a thread waiting for a lock): the
    /// checkpoint refuses it only if it still holds at the stop.
    pub transient: bool,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let now = if self.transient { " at this moment" } else { "" };
        write!(f, "pid {}: unsupported {}{now}: {}", self.pid, self.kind, self.what)
    }
}

impl Refusal {
    /// The refusal an engine error states, if it is one (else the error).
    fn from_error(e: EngineError) -> std::result::Result<Refusal, EngineError> {
        match e {
            EngineError::Unsupported { pid, kind, what } => Ok(Refusal { pid, kind, what, transient: false }),
            EngineError::Transient { pid, kind, what } => Ok(Refusal { pid, kind, what, transient: true }),
            EngineError::BadTarget { pid, why } => Ok(Refusal { pid, kind: "process tree", what: why, transient: false }),
            other => Err(other),
        }
    }
}

/// What [`inspect`] found.
#[derive(Debug, Default)]
pub struct Inspection {
    /// Host pid of the root.
    pub root: i32,
    /// Processes inspected (zombies included).
    pub processes: usize,
    /// Threads inspected.
    pub threads: usize,
    /// File descriptors inspected.
    pub descriptors: usize,
    /// Memory areas inspected.
    pub areas: usize,
    /// Everything the checkpoint would refuse, in tree order (parents
    /// first), each open file description and each area once.
    pub refusals: Vec<Refusal>,
    /// What could not be read, with the object it was read from (a
    /// process that ended meanwhile is simply left out): the inspection
    /// is incomplete, and the checkpoint would likely fail on the same.
    pub unreadable: Vec<EngineError>,
    /// How long the inspection took. The tree ran all along.
    pub elapsed: Duration,
}

impl Inspection {
    /// No refusal and nothing unreadable: as far as can be seen from
    /// outside, the checkpoint would take the tree as it is now.
    pub fn passed(&self) -> bool {
        self.refusals.is_empty() && self.unreadable.is_empty()
    }

    /// The refusals that do not pass by themselves.
    pub fn lasting(&self) -> impl Iterator<Item = &Refusal> {
        self.refusals.iter().filter(|r| !r.transient)
    }
}

/// Applies the checkpoint's refusal rules to the running tree rooted at
/// `root`, as [`crate::StoppedTree::dump`] with `opts` would apply them
/// (`after`, `tcp_established` and `external_netns` matter; `precopied`
/// and `smaps_hint` do not), and returns every refusal found: every
/// process of the tree, every thread, every open file description, every
/// memory area. The tree is not stopped or traced at any moment.
///
/// Errors: only for a root that cannot be checkpointed at all (no such
/// process, a kernel thread, lpm itself or one of its ancestors:
/// [`EngineError::BadTarget`]) or whose tree cannot be listed. Anything
/// else that cannot be read is in [`Inspection::unreadable`].
pub fn inspect(root: i32, opts: &DumpOptions) -> Result<Inspection> {
    let started = Instant::now();
    stop::check_target(root)?;
    let procs = stop::list_tree(root)?;
    let mut out = Inspection { root, ..Default::default() };
    let mut sink = Sink { out: &mut out };
    if opts.after == crate::After::Frozen {
        if let Some(none) = sink.keep(root, stop::own_cgroup(root, &procs)) {
            if none.is_none() {
                sink.keep::<()>(root, Err(stop::not_freezable(root)));
            }
        }
    }
    let members = crate::restore::Member::read(&procs);
    sink.keep(root, crate::restore::check_groups(&members, root as u32, |pid| crate::restore::outside_tree(&procs, pid)));
    let mut table = FileTable::default();
    table.tree = procs.clone();
    table.tcp_established = opts.tcp_established;
    table.shell_job = opts.shell_job;
    table.ext_unix_sk = opts.ext_unix_sk;
    for &pid in &procs {
        process(pid, root, &procs, opts, &mut table, &mut sink);
    }
    out.elapsed = started.elapsed();
    tracing::debug!(root, refusals = out.refusals.len(), elapsed_ms = out.elapsed.as_secs_f64() * 1e3, "tree inspected");
    Ok(out)
}

/// The refusals of passing states ([`Refusal::transient`]) that the open
/// files and lock requests of the tree rooted at `root` show now, as the
/// dump with `opts` would see them: a connection waiting in a listener's
/// accept queue or in its handshake, one ended but not yet closed by its
/// program, data queued where it cannot be saved, a thread waiting for a
/// lock. Those are the states a migration's stop waits out (it lets the
/// tree run a moment and stops it again) instead of failing on them.
/// Memory areas and the rest are not looked at: this runs at the stop,
/// on a stopped or a running tree, and costs a pass over the
/// descriptors only. A process that ends meanwhile is passed over.
pub fn passing(root: i32, opts: &DumpOptions) -> Result<Vec<Refusal>> {
    let procs = stop::list_tree(root)?;
    let mut out = Inspection { root, ..Default::default() };
    let mut sink = Sink { out: &mut out };
    let mut table = FileTable::default();
    table.tree = procs.clone();
    table.tcp_established = opts.tcp_established;
    for &pid in &procs {
        if sink.keep(pid, zombie::check(pid, root)) != Some(false) {
            continue;
        }
        let Some(tids) = sink.keep(pid, proc::threads(pid)) else { continue };
        let mut refused = Vec::new();
        let fds = sink.keep(pid, files::check(pid, &mut table, &mut refused));
        sink.out.refusals.extend(refused.into_iter().filter_map(|e| Refusal::from_error(e).ok()));
        if let Some(fds) = &fds {
            sink.keep(pid, locks::check(pid, fds, &tids));
        }
    }
    out.refusals.retain(|r| r.transient);
    Ok(out.refusals)
}

/// Where the rules' outcomes go.
struct Sink<'a> {
    out: &'a mut Inspection,
}

impl Sink<'_> {
    /// The value of a rule that passed; a refusal is recorded, and so is
    /// an error reading a process that still exists.
    fn keep<T>(&mut self, pid: i32, r: Result<T>) -> Option<T> {
        match r.map_err(Refusal::from_error) {
            Ok(v) => Some(v),
            Err(Ok(refusal)) => {
                self.out.refusals.push(refusal);
                None
            }
            Err(Err(_)) if gone(pid) => None,
            Err(Err(e)) => {
                self.out.unreadable.push(e);
                None
            }
        }
    }
}

/// Whether `pid` has ended: gone, a zombie now (whose /proc says little),
/// or inside exit(2) (PF_EXITING: its descriptors and memory go before it
/// is a zombie, and a look at them meanwhile fails).
fn gone(pid: i32) -> bool {
    Stat::read(pid).map_or(true, |s| s.ended())
}

/// Every rule of the dump for process `pid`, in the dump's order.
fn process(pid: i32, root: i32, tree: &[i32], opts: &DumpOptions, table: &mut FileTable, sink: &mut Sink) {
    let Ok(stat) = Stat::read(pid) else { return };
    sink.out.processes += 1;
    match sink.keep(pid, zombie::check(pid, root)) {
        Some(false) => {}
        Some(true) => {
            // A zombie is recorded from /proc, with its own rules.
            sink.keep(pid, zombie::dump(pid, tree));
            return;
        }
        None => return,
    }
    sink.keep(pid, files::tty::ctty(pid, tree));
    let ppid = stat.num(4) as i32;
    let in_tree = tree.contains(&ppid);
    let parent = if in_tree { ppid } else { std::process::id() as i32 };
    if let Some(Some(n)) = sink.keep(pid, ns::dump(pid, parent, opts.external_netns && !in_tree)) {
        sink.keep(pid, ipc::check_ns(pid, &n));
    }
    let Some(tids) = sink.keep(pid, proc::threads(pid)) else { return };
    sink.out.threads += tids.len();
    for &tid in &tids {
        // A thread that ended since the listing has nothing to refuse.
        let ended = || !std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists();
        let r = task::check_sched(pid, tid).and_then(|_| stop::check_untraced(pid, tid));
        if r.is_err() && ended() {
            continue;
        }
        sink.keep(pid, r);
    }
    sink.keep(pid, seccomp::check(pid, &tids));
    let earlier = &tree[..tree.iter().position(|&t| t == pid).unwrap_or(0)];
    sink.keep(pid, files::fd_table(pid, in_tree.then_some(ppid), earlier, &tids));
    let mut refused = Vec::new();
    let fds = sink.keep(pid, files::check(pid, table, &mut refused));
    sink.keep(pid, files::regular::cwd(pid, None));
    sink.out.refusals.extend(refused.into_iter().filter_map(|e| Refusal::from_error(e).ok()));
    if let Some(fds) = &fds {
        sink.out.descriptors += fds.len();
        sink.keep(pid, locks::check(pid, fds, &tids));
    }
    if let Some(maps) = sink.keep(pid, proc::smaps(pid)) {
        sink.out.areas += maps.len();
        if maps.iter().any(|e| e.path == "[vdso]") {
            sink.keep(pid, stop::syscall_ip(pid, &maps));
        } else {
            // A process in the middle of execve has no vDSO for a moment
            // (the new address space is mapped before it), for as long as
            // the machine takes: only a stopped tree, which no task is
            // inside execve in, tells it from one unmapped for good.
            sink.keep::<()>(
                pid,
                Err(EngineError::Transient {
                    pid,
                    kind: "memory layout",
                    what: "no [vdso] at this moment (in the middle of execve, or unmapped)".into(),
                }),
            );
        }
        sink.keep(pid, ipc::dump_maps(pid, &maps));
        for e in maps.iter().filter(|e| !ipc::is_sysv_shm(e)) {
            sink.keep(pid, mem::classify(pid, e));
        }
    }
    let own = sink.keep(pid, Status::read(pid)).and_then(|s| s.nums("NSpid").last().copied()).unwrap_or(pid as u32);
    let host_tids: Vec<u32> = tids.iter().map(|&t| t as u32).collect();
    sink.keep(pid, timers::check(pid, own, &host_tids));
}
