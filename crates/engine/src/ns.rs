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

use lpm_image::{Namespaces, Process};
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
    }
    if flags & libc::CLONE_NEWNS as u64 != 0 {
        let host = proc::mounts(parent)?;
        let host_proc = host.iter().find(|m| m.0 == "/proc").map(|m| m.1.clone());
        let host: Vec<_> = host.into_iter().map(|m| (m.0, m.2)).collect();
        for (point, dev, fstype) in proc::mounts(pid)? {
            if point == "/proc" && fstype == "proc" {
                // A procfs of its own (not the inherited copy) is remounted
                // on restore by the first process of its pid namespace.
                ns.mount_proc = host_proc.as_deref() != Some(dev.as_str());
            } else if !host.contains(&(point.clone(), fstype.clone())) {
                return Err(unsupported("mount", format!("{fstype} at {point}")));
            }
        }
    }
    if flags & libc::CLONE_NEWUTS as u64 != 0 {
        let (h, d) = uts_names(pid)?;
        ns.hostname = h;
        ns.domainname = d;
    }
    Ok(Some(ns))
}

/// Moves each "mount a private /proc" from the process owning the mount
/// namespace to the first process of the pid namespace that procfs shows:
/// the first process under it (or itself) that founds a pid namespace and
/// shares its mount namespace. Processes are in tree order.
pub fn place_mount_proc(procs: &mut [Process]) {
    let parent: HashMap<u32, u32> = procs.iter().map(|p| (p.pid, p.ppid)).collect();
    let descends = |mut p: u32, from: u32| loop {
        if p == from {
            return true;
        }
        match parent.get(&p) {
            Some(&q) if q != 0 => p = q,
            _ => return false,
        }
    };
    let owners: Vec<u32> = procs.iter().filter(|p| p.namespaces.as_ref().is_some_and(|n| n.mount_proc)).map(|p| p.pid).collect();
    for m in owners {
        let founder = procs.iter().find(|p| {
            let n = p.namespaces.as_ref().map(|n| n.clone_flags).unwrap_or(0);
            descends(p.pid, m) && n & libc::CLONE_NEWPID as u64 != 0 && (p.pid == m || n & libc::CLONE_NEWNS as u64 == 0)
        });
        if let Some(f) = founder.map(|f| f.pid).filter(|&f| f != m) {
            for p in procs.iter_mut() {
                if p.pid == m {
                    p.namespaces.as_mut().expect("owner").mount_proc = false;
                }
                if p.pid == f {
                    p.namespaces.as_mut().expect("founder").mount_proc = true;
                }
            }
        }
    }
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

/// Right after a puppet is born into a new mount namespace: stop mount
/// propagation, so nothing the restore mounts there reaches the host.
pub fn isolate_mounts(pid: i32, r: &mut Remote, s: Scratch) -> Result<()> {
    let root = put_path(pid, s, 0, "/")?;
    r.call(libc::SYS_mount, &[0, root, 0, libc::MS_REC | libc::MS_PRIVATE, 0]).step(pid, || "remote mount --make-rprivate /".into())?;
    Ok(())
}

/// Fills the namespaces a restored process owns: names, and /proc.
pub fn restore(pid: i32, r: &mut Remote, s: Scratch, ns: &Namespaces) -> Result<()> {
    if ns.clone_flags & libc::CLONE_NEWUTS as u64 != 0 {
        let a = put(pid, s, 0, ns.hostname.as_bytes())?;
        r.call(libc::SYS_sethostname, &[a, ns.hostname.len() as u64]).step(pid, || "remote sethostname".into())?;
        let a = put(pid, s, 0, ns.domainname.as_bytes())?;
        r.call(libc::SYS_setdomainname, &[a, ns.domainname.len() as u64]).step(pid, || "remote setdomainname".into())?;
    }
    if ns.mount_proc {
        let src = put_path(pid, s, 0, "proc")?;
        let target = put_path(pid, s, 64, "/proc")?;
        let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        r.call(libc::SYS_mount, &[src, target, src, flags, 0]).step(pid, || "remote mount proc on /proc".into())?;
    }
    Ok(())
}
