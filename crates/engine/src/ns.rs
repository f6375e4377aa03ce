//! Namespaces: which ones a process owns (was created into), what they
//! hold that the engine recreates (host and domain name, a private /proc),
//! and refusing what it cannot recreate (network interfaces other than lo,
//! other mounts, a pid namespace joined rather than founded).
//!
//! Ownership is per process: a namespace a process has that its parent in
//! the tree (or, for the root, the checkpointing lpm) does not. Restore
//! creates the process with those CLONE_NEW* flags, so nested trees such as
//! `unshare --fork --pid --mount-proc ...` come back with the same shape.
//!
//! A partition's network namespace is the host's business, not the tree's:
//! dumped as external, its interfaces are left to the host, and the restore
//! uses the namespace the host prepared instead of creating one.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;

use linux_raw_sys::general as raw;
use lpm_image::{Namespaces, TreeImage};
use lpm_sys::remote::Remote;

use crate::proc::{self, Status};
use crate::task::{put, put_path, Scratch};
use crate::{io_err, EngineError, Result, StepExt};

const KINDS: [(&str, i32); 5] = [
    ("pid", libc::CLONE_NEWPID),
    ("mnt", libc::CLONE_NEWNS),
    ("net", libc::CLONE_NEWNET),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
];

/// The namespaces `pid` owns compared with `parent` (lpm itself for the
/// root), with their contents; None when it owns none. With
/// `external_net`, an owned network namespace is the caller's (it brings
/// an equivalent one to the restore): its interfaces are not refused.
pub fn dump(pid: i32, parent: i32, external_net: bool) -> Result<Option<Namespaces>> {
    // Ids and capabilities inside a user namespace are relative to its
    // maps, which no restore makes again yet: a process that owns one
    // would come back with the host's ids and rights.
    if proc::link(pid, "ns/user")? != proc::link(parent, "ns/user")? {
        return Err(EngineError::Unsupported {
            pid,
            kind: "namespace",
            what: "user namespace of its own (its ids and capabilities are relative to the namespace's maps, which are not recreated)"
                .into(),
        });
    }
    let mut flags = 0u64;
    for (name, flag) in KINDS {
        if proc::link(pid, &format!("ns/{name}"))? != proc::link(parent, &format!("ns/{name}"))? {
            flags |= flag as u64;
        }
    }
    if flags == 0 {
        return Ok(None);
    }
    let unsupported = |kind, what: String| EngineError::Unsupported { pid, kind, what };
    let mut ns = Namespaces { clone_flags: flags, ..Default::default() };
    if flags & libc::CLONE_NEWPID as u64 != 0 && Status::read(pid)?.nums("NSpid").last() != Some(&1) {
        return Err(unsupported("namespace", "pid namespace it is not the first process of".into()));
    }
    if flags & libc::CLONE_NEWNET as u64 != 0 {
        let dev = proc::read(pid, "net/dev")?;
        let other = dev.lines().skip(2).filter_map(|l| l.split(':').next()).map(str::trim).find(|n| *n != "lo");
        match other {
            Some(other) if !external_net => return Err(unsupported("network namespace", format!("interface {other}"))),
            _ => ns.net_external = external_net,
        }
        let path = format!("/proc/{pid}/ns/net");
        ns.net_ns = std::fs::metadata(&path).map_err(io_err(format!("stat {path}")))?.ino();
        ns.lo_up = lo_flags(pid)? & libc::IFF_UP as u32 != 0;
        ns.ping_group_range = ping_group_range(pid)?;
    }
    if flags & libc::CLONE_NEWNS as u64 != 0 {
        // The parent's mounts are read after the process's: a mount the
        // process sees by propagation from the parent's namespace (another
        // partition's network namespace under /run/netns, made meanwhile)
        // is then in both. One made and gone between the two reads is
        // looked at again.
        let mut tries = 0;
        loop {
            let own = mountinfo(pid)?;
            let host: Vec<_> = proc::mounts(parent)?.into_iter().map(|m| (m.0, m.2)).collect();
            // Procfs at /proc is handled below, whatever its pid namespace;
            // masks are made again as they are.
            let mut masks = Vec::new();
            let mut extra = None;
            for m in own {
                let known = host.contains(&(m.point.clone(), m.fstype.clone()));
                let procfs_at_proc = m.point == "/proc" && m.fstype == "proc";
                if known || procfs_at_proc {
                    continue;
                }
                match mask_of(pid, &m) {
                    Some(mask) => masks.push(mask),
                    None => {
                        extra = Some(m);
                        break;
                    }
                }
            }
            match extra {
                None => {
                    ns.no_run_netns = host.iter().any(|(point, _)| point == RUN_NETNS)
                        && !proc::mounts(pid)?.iter().any(|(point, _, _)| point == RUN_NETNS);
                    ns.masks = masks;
                    break;
                }
                Some(m) if tries == 3 => return Err(unsupported("mount", format!("{} at {}", m.fstype, m.point))),
                Some(_) => tries += 1,
            }
        }
    }
    if flags & (libc::CLONE_NEWNS | libc::CLONE_NEWPID) as u64 != 0 {
        (ns.mount_proc, ns.proc_from) = proc_mount(pid, flags)?;
    }
    if flags & libc::CLONE_NEWUTS as u64 != 0 {
        let (h, d) = uts_names(pid)?;
        ns.hostname = h;
        ns.domainname = d;
    }
    Ok(Some(ns))
}

/// One line of /proc/PID/mountinfo, the fields the masks need.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct MountLine {
    /// The mount point.
    pub point: String,
    /// The path inside the filesystem that is mounted there.
    pub root: String,
    /// Per-mount options (`ro,nosuid,...`).
    pub opts: String,
    /// The filesystem type.
    pub fstype: String,
    /// The superblock's options.
    pub super_opts: String,
}

/// The mounts of the mount namespace of `pid`, in mount order.
pub(crate) fn mountinfo(pid: i32) -> Result<Vec<MountLine>> {
    Ok(proc::read(pid, "mountinfo")?.lines().filter_map(parse_mountinfo).collect())
}

fn parse_mountinfo(l: &str) -> Option<MountLine> {
    let w: Vec<&str> = l.split_whitespace().collect();
    let sep = w.iter().position(|x| *x == "-")?;
    Some(MountLine {
        point: unescape(w.get(4)?),
        root: unescape(w.get(3)?),
        opts: w.get(5)?.to_string(),
        fstype: w.get(sep + 1)?.to_string(),
        super_opts: w.get(sep + 3).unwrap_or(&"").to_string(),
    })
}

use lpm_sys::probe::unescape_mountinfo as unescape;

/// The per-mount flags a mask keeps, by their mountinfo names.
const MOUNT_FLAGS: [(&str, u64); 7] = [
    ("nosuid", libc::MS_NOSUID),
    ("nodev", libc::MS_NODEV),
    ("noexec", libc::MS_NOEXEC),
    ("noatime", libc::MS_NOATIME),
    ("nodiratime", libc::MS_NODIRATIME),
    ("relatime", libc::MS_RELATIME),
    ("strictatime", libc::MS_STRICTATIME),
];

/// The mask `m` is, seen in the mount namespace of `pid`: a read-only
/// mount that holds nothing (an empty tmpfs, or the null device bound over
/// a file), which a restore makes again exactly. None for any other mount.
pub(crate) fn mask_of(pid: i32, m: &MountLine) -> Option<lpm_image::MountMask> {
    if !m.opts.split(',').any(|o| o == "ro") {
        return None;
    }
    let flags = m.opts.split(',').filter_map(|o| MOUNT_FLAGS.iter().find(|(n, _)| *n == o)).fold(0, |a, (_, f)| a | f);
    let seen = format!("/proc/{pid}/root{}", m.point);
    match m.fstype.as_str() {
        "tmpfs" if m.root == "/" => {
            // A read-only tmpfs is empty for good once it is empty: made
            // again with its options, it holds what it held.
            let empty = std::fs::read_dir(&seen).ok()?.next().is_none();
            let sb_ro = m.super_opts.split(',').any(|o| o == "ro");
            let options: Vec<&str> = m.super_opts.split(',').filter(|o| *o != "ro" && *o != "rw" && !o.is_empty()).collect();
            (empty && sb_ro).then(|| lpm_image::MountMask { path: m.point.clone(), null_file: false, flags, options: options.join(",") })
        }
        "devtmpfs" | "tmpfs" => {
            let st = std::fs::metadata(&seen).ok()?;
            let null = std::os::unix::fs::FileTypeExt::is_char_device(&st.file_type()) && st.rdev() == libc::makedev(1, 3);
            null.then(|| lpm_image::MountMask { path: m.point.clone(), null_file: true, flags, options: String::new() })
        }
        _ => None,
    }
}

/// Who recreates /proc of the mount namespace of `pid`, which owns a
/// mount or pid namespace: `mount_proc` when `pid` mounts it itself, and
/// `proc_from` (an image pid) when the owner of the mount namespace
/// attaches one made in the pid namespace of that process.
///
/// A restored mount namespace starts as a copy of the restorer's, taken
/// when its owner is cloned and before any procfs is mounted in the tree
/// (mounts come late, see [`restore`]), so it shows the restorer's /proc.
/// Any other procfs on top of /proc (where the tree's processes look) is
/// made again, and the kernel ties a new procfs to the pid namespace of
/// the task that creates it. The pid namespace to recreate is the one the
/// procfs shows (its pid 1's `ns/pid`, seen through the task's own root):
/// - Among the processes in both that mount and that pid namespace, the
///   one owning a namespace relative to its parent mounts it (the mount
///   namespace's owner, or the first process of a pid namespace nested
///   inside it): `mount_proc`.
/// - When none is in both (the first process of that pid namespace
///   mounted it, then moved on to a mount namespace of its own, as
///   `unshare --fork --pid --mount-proc` run as a partition's init does),
///   that first process creates the procfs and the mount namespace's owner
///   attaches it: `proc_from`.
/// - A procfs of a pid namespace that has ended, or of one whose first
///   process is not below the owner, is refused.
///
/// Only the procfs on top is recreated: layers hidden under it (a
/// partition's own /proc under the one of a pid namespace nested inside)
/// are not, since nothing can reach them.
fn proc_mount(pid: i32, flags: u64) -> Result<(bool, u32)> {
    let unsupported = |what: String| EngineError::Unsupported { pid, kind: "mount", what };
    let top = proc::stat(pid, "root/proc")?;
    if top.dev() == proc::stat(std::process::id() as i32, "root/proc")?.dev() {
        return Ok((false, 0));
    }
    let path = format!("/proc/{pid}/root/proc");
    let fs = rustix::fs::statfs(path.as_str()).map_err(|e| io_err(format!("statfs {path}"))(e.into()))?;
    if fs.f_type != PROC_SUPER_MAGIC {
        // Not a procfs: the owner of the mount namespace refuses it with
        // its other mounts.
        return Ok((false, 0));
    }
    let shown = proc::stat(pid, "root/proc/1/ns/pid")
        .map_err(|_| unsupported("procfs at /proc of a pid namespace that has ended (it has no pid 1)".into()))?
        .ino();
    if proc::stat(pid, "ns/pid")?.ino() == shown {
        return Ok((true, 0));
    }
    if flags & libc::CLONE_NEWNS as u64 == 0 {
        return Ok((false, 0));
    }
    let mnt = proc::link(pid, "ns/mnt")?;
    let mut first = None;
    for d in descendants(pid) {
        // Tasks whose namespaces cannot be read (zombies) do not count.
        let Ok(ns) = proc::stat(d, "ns/pid") else { continue };
        if ns.ino() != shown {
            continue;
        }
        if proc::link(d, "ns/mnt").ok().as_deref() == Some(mnt.as_str()) {
            // It mounts it itself.
            return Ok((false, 0));
        }
        if first.is_none() && Status::read(d)?.nums("NSpid").last() == Some(&1) {
            first = Some(d);
        }
    }
    match first {
        Some(f) => Ok((false, f as u32)),
        None => Err(unsupported(format!("procfs at /proc of pid namespace {shown}, whose first process is not below this one"))),
    }
}

/// statfs f_type of procfs.
const PROC_SUPER_MAGIC: rustix::fs::FsWord = linux_raw_sys::general::PROC_SUPER_MAGIC as rustix::fs::FsWord;

/// Every live descendant of `pid`, parents first.
fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut next = vec![pid];
    while let Some(p) = next.pop() {
        // A task that exited meanwhile has no children to list.
        let kids = proc::children(p).unwrap_or_default();
        out.extend(&kids);
        next.extend(kids.into_iter().rev());
    }
    out
}

/// Reads host and domain name inside the task's uts namespace, from a
/// short-lived thread that joins it (uts membership is per thread).
fn uts_names(pid: i32) -> Result<(String, String)> {
    let path = format!("/proc/{pid}/ns/uts");
    let f = std::fs::File::open(&path).map_err(io_err(format!("open {path}")))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&f),
                Some(rustix::thread::LinkNameSpaceType::HostNameAndNISDomainName),
            )
            .map_err(|e| io_err(format!("setns {path}"))(e.into()))?;
            let h = std::fs::read_to_string("/proc/sys/kernel/hostname").map_err(io_err("read hostname"))?;
            let d = std::fs::read_to_string("/proc/sys/kernel/domainname").map_err(io_err("read domainname"))?;
            Ok((h.trim().to_string(), d.trim().to_string()))
        })
        .join()
        .unwrap_or_else(|_| Err(EngineError::Incompatible("uts reader thread panicked".into())))
    })
}

/// Flags of `lo` in the network namespace of `pid`, read from a socket
/// created there.
fn lo_flags(pid: i32) -> Result<u32> {
    let path = format!("/proc/{pid}/ns/net");
    let f = std::fs::File::open(&path).map_err(io_err(format!("open {path}")))?;
    lpm_sys::net::in_netns(std::os::fd::AsFd::as_fd(&f), || {
        let s = lpm_sys::net::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        lpm_sys::net::if_flags(std::os::fd::AsFd::as_fd(&s), "lo")
    })
    .and_then(|r| r)
    .step(pid, || "read the flags of lo".into())
}

/// Where a network namespace keeps the gids allowed ICMP sockets; the
/// file a thread opens shows the namespace of that thread.
const PING_GROUP_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

/// `net.ipv4.ping_group_range` of the network namespace of `pid`, empty
/// when it is the default "1 0" (nobody).
fn ping_group_range(pid: i32) -> Result<Vec<u32>> {
    let path = format!("/proc/{pid}/ns/net");
    let f = std::fs::File::open(&path).map_err(io_err(format!("open {path}")))?;
    let text = lpm_sys::net::in_netns(std::os::fd::AsFd::as_fd(&f), || std::fs::read_to_string(PING_GROUP_RANGE))
        .step(pid, || "enter its network namespace".into())?
        .map_err(io_err(format!("read {PING_GROUP_RANGE} of process {pid}'s network namespace")))?;
    let range: Vec<u32> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    if range.len() != 2 {
        return Err(EngineError::Incompatible(format!("process {pid}: {PING_GROUP_RANGE} reads {text:?}")));
    }
    Ok(if range == [1, 0] { Vec::new() } else { range })
}

/// Writes the recorded `net.ipv4.ping_group_range` (if any) into the
/// network namespace `ns` restored for process `pid`, before any socket
/// is made there: an ICMP socket is checked against it when created.
pub fn restore_net_sysctls(ns: std::os::fd::BorrowedFd<'_>, pid: i32, n: &Namespaces) -> Result<()> {
    if n.ping_group_range.is_empty() {
        return Ok(());
    }
    let text = n.ping_group_range.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
    lpm_sys::net::in_netns(ns, || std::fs::write(PING_GROUP_RANGE, &text))
        .step(pid, || "enter its network namespace".into())?
        .map_err(io_err(format!("write {text:?} to {PING_GROUP_RANGE} in the network namespace of process {pid}")))
}

/// Creates the network namespaces the tree's processes own, before any
/// socket is created (sockets are made inside them, and the puppets join
/// them), with `lo` up where it was; keyed by `Namespaces::net_ns`. A
/// namespace the image marks external (the caller's) is refused: the
/// restore must bring it (`RestoreOptions::netns`), and leaves it out of
/// the tree it hands here.
pub fn create_net(tree: &lpm_image::TreeImage) -> Result<HashMap<u64, std::os::fd::OwnedFd>> {
    let mut out = HashMap::new();
    for p in &tree.processes {
        let Some(n) = p.namespaces.as_ref().filter(|n| n.clone_flags & libc::CLONE_NEWNET as u64 != 0) else { continue };
        if n.net_external {
            return Err(EngineError::Incompatible(format!(
                "process {} owned the caller's network namespace (with its interfaces): the restore must be given one",
                p.pid
            )));
        }
        let ns = lpm_sys::net::new_netns().step(p.pid as i32, || "create network namespace".into())?;
        if n.lo_up {
            bring_lo_up(std::os::fd::AsFd::as_fd(&ns), p.pid as i32)?;
        }
        restore_net_sysctls(std::os::fd::AsFd::as_fd(&ns), p.pid as i32, n)?;
        out.insert(n.net_ns, ns);
    }
    Ok(out)
}

/// Sets `lo` up in network namespace `ns` (for process `pid` of the image).
pub fn bring_lo_up(ns: std::os::fd::BorrowedFd<'_>, pid: i32) -> Result<()> {
    lpm_sys::net::in_netns(ns, || {
        let s = lpm_sys::net::socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
        let s = std::os::fd::AsFd::as_fd(&s);
        let flags = lpm_sys::net::if_flags(s, "lo")?;
        lpm_sys::net::set_if_flags(s, "lo", flags | libc::IFF_UP as u32)
    })
    .and_then(|r| r)
    .step(pid, || "bring lo up in its network namespace".into())
}

/// Makes a newborn puppet join the network namespace recreated for it
/// (instead of cloning a fresh one, which would not hold its sockets).
/// The restorer's descriptor for it is inherited at the same number.
pub fn join_net(pid: i32, r: &mut Remote, n: &Namespaces, net: &HashMap<u64, std::os::fd::OwnedFd>) -> Result<()> {
    if n.clone_flags & libc::CLONE_NEWNET as u64 == 0 {
        return Ok(());
    }
    let fd = net.get(&n.net_ns).ok_or_else(|| EngineError::Incompatible(format!("network namespace {} was not created", n.net_ns)))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(fd);
    r.call(libc::SYS_setns, &[fd as u64, libc::CLONE_NEWNET as u64]).step(pid, || "remote setns into its network namespace".into())?;
    Ok(())
}

/// Where the host binds its network namespaces by name (iproute2's
/// netns directory, a mount of its own with one mount per namespace).
const RUN_NETNS: &str = "/run/netns";

/// Right after a puppet is born into a new mount namespace: stop mount
/// propagation, so nothing the restore mounts there reaches the host; and
/// when the image's namespace did not see the host's /run/netns, detach
/// this host's (with the namespaces bound under it) as its owner did.
pub fn isolate_mounts(pid: i32, r: &mut Remote, s: Scratch, n: Option<&Namespaces>) -> Result<()> {
    let root = put_path(pid, s, 0, "/")?;
    r.call(libc::SYS_mount, &[0, root, 0, libc::MS_REC | libc::MS_PRIVATE, 0]).step(pid, || "remote mount --make-rprivate /".into())?;
    if n.is_some_and(|n| n.no_run_netns) {
        hide_run_netns(pid, r, s)?;
    }
    Ok(())
}

/// Detaches the host's /run/netns in the mount namespace of `pid`. It
/// waits out an RCU grace period (5 to 15 ms) when there is something to
/// detach, which a migration's restore spends ahead of its stop, in its
/// vessel ([`crate::Vessel::own_mounts`]): a namespace copied from there
/// has nothing left to detach.
pub fn hide_run_netns(pid: i32, r: &mut Remote, s: Scratch) -> Result<()> {
    let dir = put_path(pid, s, 0, RUN_NETNS)?;
    match r.call(libc::SYS_umount2, &[dir, libc::MNT_DETACH as u64]) {
        Ok(_) => Ok(()),
        // Not a mount point here: nothing to hide.
        Err(e) if e.errno() == Some(libc::EINVAL) || e.errno() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(e).step(pid, || format!("remote umount {RUN_NETNS}")),
    }
}

/// Fills the namespaces a restored process owns: names, and /proc when it
/// is the process that mounts it ([`proc_mount`]). Called for every
/// process once all are shaped: a puppet reaches its files through the
/// restorer's /proc (`/proc/self/fd`) until then, which a procfs of a
/// pid namespace it is not in would hide.
pub fn restore(pid: i32, r: &mut Remote, s: Scratch, ns: &Namespaces) -> Result<()> {
    if ns.clone_flags & libc::CLONE_NEWUTS as u64 != 0 {
        let a = put(pid, s, 0, ns.hostname.as_bytes())?;
        r.call(libc::SYS_sethostname, &[a, ns.hostname.len() as u64]).step(pid, || "remote sethostname".into())?;
        let a = put(pid, s, 0, ns.domainname.as_bytes())?;
        r.call(libc::SYS_setdomainname, &[a, ns.domainname.len() as u64]).step(pid, || "remote setdomainname".into())?;
    }
    if ns.clone_flags & libc::CLONE_NEWNS as u64 != 0 {
        for m in &ns.masks {
            mount_mask(pid, r, s, m)?;
        }
    }
    if ns.mount_proc {
        let src = put_path(pid, s, 0, "proc")?;
        let target = put_path(pid, s, 64, "/proc")?;
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        r.call(libc::SYS_mount, &[src, target, src, flags, 0]).step(pid, || "remote mount proc on /proc".into())?;
    }
    Ok(())
}

/// Mounts mask `m` in the mount namespace of `pid`: read-only, as it was.
fn mount_mask(pid: i32, r: &mut Remote, s: Scratch, m: &lpm_image::MountMask) -> Result<()> {
    let what = |step: &str| {
        let step = format!("remote {step} of the mask over {}", m.path);
        move || step
    };
    let target = put_path(pid, s, 8192, &m.path)?;
    // The `mask-rw` sabotage leaves the mask writable, for a test to see
    // `--verify` name it.
    let ro = if crate::verify::sabotaged("mask-rw") { 0 } else { libc::MS_RDONLY };
    if m.null_file {
        let src = put_path(pid, s, 0, "/dev/null")?;
        r.call(libc::SYS_mount, &[src, target, 0, libc::MS_BIND, 0]).step(pid, what("bind mount"))?;
        r.call(libc::SYS_mount, &[0, target, 0, libc::MS_REMOUNT | libc::MS_BIND | ro | m.flags, 0])
            .step(pid, what("read-only remount"))?;
    } else {
        let src = put_path(pid, s, 0, "tmpfs")?;
        let data = put_path(pid, s, 64, &m.options)?;
        r.call(libc::SYS_mount, &[src, target, src, ro | m.flags, data]).step(pid, what("tmpfs mount"))?;
    }
    Ok(())
}

/// Puts on /proc of each mount namespace whose owner has
/// `Namespaces::proc_from` the procfs of that process's pid namespace:
/// the process creates it (fsopen, fsmount: a new procfs belongs to the
/// pid namespace of its creator) and the owner, in the mount namespace,
/// takes the mount from it (pidfd_getfd) and attaches it (move_mount).
/// Runs with the mounts of [`restore`], once every process is shaped;
/// `remote` gives the puppet of an image pid.
pub fn attach_procs(tree: &TreeImage, s: Scratch, mut remote: impl FnMut(u32) -> Option<Remote>) -> Result<()> {
    for owner in &tree.processes {
        let Some(from) = owner.namespaces.as_ref().map(|n| n.proc_from).filter(|&f| f != 0) else { continue };
        let pid = owner.pid as i32;
        let missing = |what: &str| EngineError::Incompatible(format!("process {pid} takes its /proc from {what}"));
        let maker = tree.processes.iter().find(|p| p.pid == from).ok_or_else(|| missing(&format!("process {from}, not in the image")))?;
        // The maker's pid as the owner sees it: at the owner's own level.
        let seen = owner
            .nspid
            .len()
            .checked_sub(1)
            .and_then(|level| maker.nspid.get(level))
            .copied()
            .ok_or_else(|| missing(&format!("process {from}, outside its pid namespace")))?;
        let mut m = remote(maker.pid).ok_or_else(|| missing(&format!("process {from}, not restored")))?;
        let mut o = remote(owner.pid).ok_or_else(|| EngineError::Incompatible(format!("process {pid} was not restored")))?;
        let (mh, oh) = (m.tid(), o.tid());
        let what = |step: &str| {
            let step = step.to_string();
            move || format!("{step} for /proc of process {pid}")
        };
        let name = put_path(mh, s, 0, "proc")?;
        let fsfd = m.call(libc::SYS_fsopen, &[name, raw::FSOPEN_CLOEXEC as u64]).step(mh, what("remote fsopen proc"))?;
        let made = m
            .call(libc::SYS_fsconfig, &[fsfd, raw::fsconfig_command::FSCONFIG_CMD_CREATE as u64, 0, 0, 0])
            .step(mh, what("remote fsconfig create"));
        let attrs = raw::MOUNT_ATTR_NOSUID | raw::MOUNT_ATTR_NODEV | raw::MOUNT_ATTR_NOEXEC;
        let mnt = made
            .and_then(|_| m.call(libc::SYS_fsmount, &[fsfd, raw::FSMOUNT_CLOEXEC as u64, attrs as u64]).step(mh, what("remote fsmount")));
        m.call(libc::SYS_close, &[fsfd]).step(mh, what("remote close fs context"))?;
        let mnt = mnt?;
        let pidfd = o.call(libc::SYS_pidfd_open, &[seen as u64, 0]).step(oh, what(&format!("remote pidfd_open {seen}")))?;
        let fd = o.call(libc::SYS_pidfd_getfd, &[pidfd, mnt, 0]).step(oh, what("remote pidfd_getfd of the mount"));
        o.call(libc::SYS_close, &[pidfd]).step(oh, what("remote close pidfd"))?;
        m.call(libc::SYS_close, &[mnt]).step(mh, what("remote close mount"))?;
        let fd = fd?;
        let empty = put(oh, s, 0, b"\0")?;
        let target = put_path(oh, s, 64, "/proc")?;
        let moved = o
            .call(libc::SYS_move_mount, &[fd, empty, libc::AT_FDCWD as u64, target, raw::MOVE_MOUNT_F_EMPTY_PATH as u64])
            .step(oh, what("remote move_mount on /proc"));
        o.call(libc::SYS_close, &[fd]).step(oh, what("remote close mount"))?;
        moved?;
    }
    Ok(())
}
