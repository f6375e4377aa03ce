//! Restore ahead: the puppets of a migrating tree made during pre-copy,
//! so that the stop does not fork them.
//!
//! The source reads a provisional description of its running tree
//! ([`describe`]: processes, pids in every namespace, parents, sessions,
//! groups, namespaces, memory areas) from /proc without stopping it, with
//! the same functions the dump uses for those fields. The target forks
//! the puppets from it ([`build`]) exactly as the restore's spawn stage
//! would (`restore::spawn_tree`: pids by set_tid, sessions and groups,
//! the partition's network and mount namespaces, every address-space
//! layout) and holds them in their ptrace stops, where no user code runs.
//!
//! In the stop the restore compares the final image with the description
//! ([`Ahead::fits`]): the whole ahead tree is reused only when every
//! input the spawn stage reads is the same in both (a key per process);
//! any difference (a process that came or went, an area that moved or
//! changed) discards all of it, and the ordinary spawn runs. Reuse is
//! all or nothing because a puppet is forked from its parent: a changed
//! parent would make all its descendants wrong, and what they inherited
//! from it (areas kept alike) cannot be checked from outside.
//!
//! What the stop alone knows is kept out of the ahead state: the files
//! the tree holds are opened in the stop, so the puppets made ahead share
//! the restorer's descriptor table (CLONE_FILES) and each takes a copy of
//! it once they are opened (`unshare(CLONE_FILES)`), as a puppet forked
//! then would; trees whose spawn needs more from the stop are not built
//! ahead ([`refusal`]): shared memory, unlinked or SysV-attached areas,
//! a controlling terminal, zombies, a descriptor table shared with the
//! parent, network namespaces of their own, and pages shared
//! copy-on-write (which only forking after the pages are written shares
//! again).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lpm_image::{Process, Thread, TreeImage, Vma, VmaKind};

use crate::proc::{self, MapEntry, Stat, Status};
use crate::{files, mem, ns, stop, Result};

/// The sabotage that reuses an ahead tree whatever the final image says
/// of its processes' areas (its processes must still be the same), for a
/// test to prove that a stale layout is caught, never restored.
pub const SABOTAGE_STALE: &str = "ahead-stale";

/// The provisional description of the running tree rooted at `root`:
/// what the target's spawn stage needs, read from /proc without stopping
/// anything, with the dump's own functions. `external_netns`: the root
/// is in the partition's network namespace, which the target brings.
/// `hint`: areas with their flags read lately (a migration's smaps read
/// after each round), used for a process whose maps are still the same.
/// A process that exits meanwhile makes it fail; the caller tries again
/// later.
pub fn describe(root: i32, external_netns: bool, hint: &HashMap<i32, Vec<MapEntry>>) -> Result<TreeImage> {
    let procs = stop::list_tree(root)?;
    let mut tree = TreeImage { writer: "lpm provisional".into(), root_pid: root as u32, ..Default::default() };
    for (i, &pid) in procs.iter().enumerate() {
        let stat = Stat::read(pid)?;
        let ppid = stat.num(4) as i32;
        let in_tree = procs.contains(&ppid);
        let mut p = Process {
            pid: pid as u32,
            ppid: if in_tree { ppid as u32 } else { 0 },
            pgid: stat.num(5) as u32,
            sid: stat.num(6) as u32,
            host_pid: pid as u32,
            start_time: stat.num(22),
            ..Default::default()
        };
        if stat.state() == 'Z' {
            p.zombie = Some(Default::default());
            tree.processes.push(p);
            continue;
        }
        let st = Status::read(pid)?;
        p.nspid = st.nums("NSpid");
        p.nspgid = st.nums("NSpgid");
        p.ctty = files::tty::ctty(pid, &procs)?;
        p.namespaces = ns::dump(pid, if in_tree { ppid } else { std::process::id() as i32 }, external_netns && !in_tree)?;
        let tids = proc::threads(pid)?;
        p.shares_parent_files = files::fd_table(pid, in_tree.then_some(ppid), &procs[..i], &tids)?;
        p.threads = tids.iter().map(|&t| Thread { tid: t as u32, ..Default::default() }).collect();
        let maps = areas(pid, hint.get(&pid))?;
        if maps.iter().any(crate::ipc::is_sysv_shm) {
            p.sysv_shm_maps = vec![Default::default()];
        }
        let vmas: Vec<Vma> = maps.iter().filter(|e| !crate::ipc::is_sysv_shm(e)).map(|e| mem::classify(pid, e)).collect::<Result<_>>()?;
        p.mm = Some(lpm_image::Mm { vmas, ..Default::default() });
        tree.processes.push(p);
    }
    Ok(tree)
}

/// The areas of `pid` with their flags: the hint when maps shows the very
/// same areas, else smaps.
fn areas(pid: i32, hint: Option<&Vec<MapEntry>>) -> Result<Vec<MapEntry>> {
    if let Some(h) = hint {
        let now = proc::maps(pid)?;
        let same = |a: &MapEntry, b: &MapEntry| {
            (a.start, a.end, &a.perms, a.offset, a.major, a.minor, a.inode, &a.path)
                == (b.start, b.end, &b.perms, b.offset, b.major, b.minor, b.inode, &b.path)
        };
        if now.len() == h.len() && now.iter().zip(h).all(|(a, b)| same(a, b)) {
            return Ok(h.clone());
        }
    }
    proc::smaps(pid)
}

/// Why the spawn of `tree` cannot be made ahead (it needs what only the
/// stop brings), or None when it can.
pub fn refusal(tree: &TreeImage) -> Option<String> {
    if !tree.processes.iter().any(|p| p.pid == tree.root_pid) {
        return Some("no root process".into());
    }
    let root_net = tree.processes.iter().find(|p| p.pid == tree.root_pid).and_then(|p| p.namespaces.as_ref()).map(|n| n.net_ns);
    for p in &tree.processes {
        let why = if p.zombie.is_some() {
            "a zombie"
        } else if p.ctty.is_some() {
            "a controlling terminal"
        } else if p.shares_parent_files {
            "a descriptor table shared with its parent"
        } else if !p.sysv_shm_maps.is_empty() {
            "SysV shared memory attached"
        } else if p.namespaces.as_ref().is_some_and(|n| {
            n.clone_flags & libc::CLONE_NEWNET as u64 != 0 && (p.pid != tree.root_pid || !n.net_external || Some(n.net_ns) != root_net)
        }) {
            "a network namespace of its own"
        } else if let Some(v) = p.mm.iter().flat_map(|m| &m.vmas).find(|v| needs_stop(v)) {
            return Some(format!("pid {}: area {:#x}-{:#x} {:?} needs objects made in the stop", p.pid, v.start, v.end, v.path));
        } else {
            continue;
        };
        return Some(format!("pid {}: {why}", p.pid));
    }
    None
}

/// An area whose mapping needs an object the restore makes in the stop
/// (shared memory, a memfd, an unlinked file) or pages it writes there.
fn needs_stop(v: &Vma) -> bool {
    let kind = VmaKind::try_from(v.kind).unwrap_or(VmaKind::Invalid);
    matches!(kind, VmaKind::AnonShared | VmaKind::ShmemPrivate | VmaKind::Invalid)
        || v.ghost_id != 0
        || v.huge_page_size != 0
        || v.path.ends_with(" (deleted)")
        || v.path.starts_with("/memfd:")
}

/// What the spawn stage reads of one process: two trees with the same
/// keys spawn alike.
#[derive(Debug, PartialEq)]
struct Key<'a> {
    pid: u32,
    ppid: u32,
    pgid: u32,
    sid: u32,
    nspid: &'a [u32],
    /// clone flags, network namespace identity, whether /run/netns is
    /// hidden.
    ns: Option<(u64, u64, bool, bool)>,
    shares_parent_files: bool,
    ctty: Option<u32>,
    zombie: bool,
    sysv: bool,
    vmas: Vec<VmaKey<'a>>,
}

/// What the layout reads of an area (not its advice or pages, which the
/// shape stage applies in the stop).
#[derive(Debug, PartialEq)]
struct VmaKey<'a> {
    start: u64,
    end: u64,
    prot: u32,
    flags: u32,
    kind: i32,
    path: &'a str,
    pgoff: u64,
    shmem_id: u64,
    dev: u64,
    inode: u64,
    vm_flags: &'a [String],
    ghost_id: u64,
    huge_page_size: u64,
}

fn key(p: &Process) -> Key<'_> {
    Key {
        pid: p.pid,
        ppid: p.ppid,
        pgid: p.pgid,
        sid: p.sid,
        nspid: &p.nspid,
        ns: p.namespaces.as_ref().map(|n| (n.clone_flags, n.net_ns, n.net_external, n.no_run_netns)),
        shares_parent_files: p.shares_parent_files,
        ctty: p.ctty,
        zombie: p.zombie.is_some(),
        sysv: !p.sysv_shm_maps.is_empty(),
        vmas: p
            .mm
            .iter()
            .flat_map(|m| &m.vmas)
            .map(|v| VmaKey {
                start: v.start,
                end: v.end,
                prot: v.prot,
                flags: v.flags,
                kind: v.kind,
                path: &v.path,
                pgoff: v.pgoff,
                shmem_id: v.shmem_id,
                dev: v.dev,
                inode: v.inode,
                vm_flags: &v.vm_flags,
                ghost_id: v.ghost_id,
                huge_page_size: v.huge_page_size,
            })
            .collect(),
    }
}

/// The first difference between the spawn inputs of two trees, named;
/// without `layouts`, differences in areas only are passed over (the
/// sabotage).
fn difference(ahead: &TreeImage, fin: &TreeImage, layouts: bool) -> Option<String> {
    if ahead.root_pid != fin.root_pid {
        return Some(format!("the root is {} now, was {}", fin.root_pid, ahead.root_pid));
    }
    let by_pid: HashMap<u32, &Process> = ahead.processes.iter().map(|p| (p.pid, p)).collect();
    for p in &fin.processes {
        let Some(a) = by_pid.get(&p.pid) else { return Some(format!("pid {} came since", p.pid)) };
        let (mut ka, mut kf) = (key(a), key(p));
        if !layouts {
            (ka.vmas, kf.vmas) = (Vec::new(), Vec::new());
        }
        if ka != kf {
            if ka.vmas != kf.vmas {
                let diff = kf.vmas.iter().zip(&ka.vmas).find(|(f, a)| f != a).map(|(f, _)| f).or(kf.vmas.get(ka.vmas.len()));
                return Some(match diff {
                    Some(v) => format!("pid {}: area {:#x}-{:#x} {:?} differs", p.pid, v.start, v.end, v.path),
                    None => format!("pid {}: {} areas now, {} then", p.pid, kf.vmas.len(), ka.vmas.len()),
                });
            }
            return Some(format!("pid {}: its ids, namespaces or descriptor table differ", p.pid));
        }
    }
    if let Some(gone) = ahead.processes.iter().find(|a| !fin.processes.iter().any(|p| p.pid == a.pid)) {
        return Some(format!("pid {} went since", gone.pid));
    }
    None
}

/// A tree spawned ahead of a migration's stop, its puppets held in their
/// ptrace stops by the thread that built it, which must also be the one
/// to restore with it (ptrace is per thread). Dropping it kills and reaps
/// every puppet.
pub struct Ahead {
    desc: TreeImage,
    pub(crate) puppets: crate::restore::Puppets,
    pub(crate) trampoline: u64,
    external_netns: bool,
    /// The network namespaces the puppets joined, open while they live.
    _net: HashMap<u64, OwnedFd>,
    /// How long the build took.
    pub built: Duration,
}

impl std::fmt::Debug for Ahead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ahead").field("processes", &self.desc.processes.len()).field("built", &self.built).finish()
    }
}

/// What became of an ahead tree in the stop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AheadOutcome {
    /// Every process was reused: the spawn stage did not run.
    Reused {
        /// Processes reused.
        processes: usize,
    },
    /// Discarded; the ordinary spawn ran.
    Discarded {
        /// The first difference, or why it could not be used.
        why: String,
    },
}

/// Spawns the tree `desc` describes ahead of the stop, from `vessel` (in
/// the restore's cgroups already), with `netns` the partition's network
/// namespace when the root lives in it. Refused (nothing left behind)
/// when [`refusal`] names something the stop alone brings.
pub fn build(desc: TreeImage, netns: Option<OwnedFd>, cgroups: &[PathBuf], vessel: crate::Vessel) -> Result<Ahead> {
    let t = Instant::now();
    if let Some(why) = refusal(&desc) {
        return Err(crate::EngineError::Incompatible(format!("not built ahead: {why}")));
    }
    let external_netns = desc.processes.iter().any(|p| p.namespaces.as_ref().is_some_and(|n| n.net_external));
    let mut net = HashMap::new();
    if let (Some(fd), Some(id)) =
        (netns, desc.processes.iter().find(|p| p.pid == desc.root_pid).and_then(|p| p.namespaces.as_ref()).map(|n| n.net_ns))
    {
        net.insert(id, fd);
    }
    let (puppets, trampoline, net) = crate::restore::spawn_ahead(&desc, net, cgroups, vessel)?;
    let built = t.elapsed();
    tracing::debug!(processes = desc.processes.len(), ms = built.as_secs_f64() * 1e3, "tree spawned ahead");
    Ok(Ahead { desc, puppets, trampoline, external_netns, _net: net, built })
}

impl Ahead {
    pub(crate) fn into_puppets(self) -> crate::restore::Puppets {
        self.puppets
    }

    /// Processes held.
    pub fn processes(&self) -> usize {
        self.desc.processes.len()
    }

    /// Why it cannot stand for the spawn of the final image `fin` (with
    /// `plan_empty`: no pages shared copy-on-write), or None when every
    /// input of the spawn stage is the same.
    pub(crate) fn misfit(&self, fin: &TreeImage, plan_empty: bool, external_netns: bool, free: bool) -> Option<String> {
        if crate::verify::sabotaged(SABOTAGE_STALE) {
            tracing::warn!("sabotage {SABOTAGE_STALE}: the layouts spawned ahead are reused unchecked");
            return difference(&self.desc, fin, false);
        }
        if let Some(why) = refusal(fin) {
            return Some(why);
        }
        if !plan_empty {
            return Some("the tree shares pages copy-on-write, which only forking after they are written shares again".into());
        }
        if external_netns != self.external_netns {
            return Some("the root changed its network namespace".into());
        }
        if !free {
            return Some("its trampoline overlaps an area of the image".into());
        }
        difference(&self.desc, fin, true)
    }
}
