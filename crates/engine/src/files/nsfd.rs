//! Namespace descriptors: a process holding /proc/PID/ns/net open (to
//! setns into it later, or to keep the namespace alive).
//!
//! Kept: network namespaces the tree owns. The restore recreates those
//! before any file is opened (`ns::create_net`), so the descriptor is a
//! new description of the recreated namespace, whoever holds it; a
//! partition's own namespace, given to the restore, is the one the
//! restorer's thread is in while it opens files.
//!
//! Also kept: uts, ipc, mnt and pid namespaces a process of the tree is
//! in (not the host's): recorded with that member, they exist only once
//! the member's puppet is cloned into them, so each holder opens the
//! namespace through /proc/MEMBER/ns once every puppet exists
//! ([`install_by_member`]), a description of its own per holder.
//!
//! Refused by name: a namespace outside the tree (the host's, or another
//! tree's): on the target of a migration there is no such namespace to
//! name, and on the same host a restored tree holding the host's would
//! make what it does there reach outside the image's state; a network
//! namespace no process of the tree is in (kept alive by the descriptor
//! or a bind mount only: nothing records what it holds), and the same
//! for the other kept types; user, cgroup and time namespaces, which lpm
//! never makes for a tree.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use lpm_image::{Fd, FileImage, NsFdImage, Process};
use lpm_sys::remote::Remote;

use super::{FileTable, Kind, OpenCx, Seen};
use crate::task::{put_path, Scratch};
use crate::{io_err, EngineError, Result, StepExt};

/// Namespace descriptors.
pub struct NsFd;

/// The types /proc/PID/ns shows, as a descriptor's link names them.
const TYPES: [&str; 10] = ["net", "mnt", "pid", "uts", "ipc", "user", "cgroup", "time", "pid_for_children", "time_for_children"];

/// Whether a descriptor's link names a namespace ("net:[4026531840]").
pub(super) fn is_ns(link: &str) -> bool {
    link.split_once(":[").is_some_and(|(t, rest)| TYPES.contains(&t) && rest.ends_with(']'))
}

/// The types a tree may own besides net, kept through a member of the
/// tree: uts, ipc, mnt and pid (`ns::dump`'s kinds).
const BY_MEMBER: [&str; 4] = ["uts", "ipc", "mnt", "pid"];

/// The namespace a descriptor names, or why it cannot be kept.
fn read(seen: &Seen, table: &FileTable) -> Result<NsFdImage> {
    let ty = seen.link.split(':').next().unwrap_or_default();
    if ty != "net" && !BY_MEMBER.contains(&ty) {
        return Err(seen.unsupported(format!("descriptor of a {ty} namespace, which no tree owns (lpm makes no {ty} namespaces)")));
    }
    let ino = seen.st.ino();
    // A pid namespace's descriptor may come from pid_for_children: both
    // link as "pid", and the inode tells the namespace.
    let files: &[&str] = if ty == "pid" { &["pid", "pid_for_children"] } else { &[ty] };
    let inode = |pid: i32, file: &str| std::fs::metadata(format!("/proc/{pid}/ns/{file}")).map(|m| m.ino());
    let own = inode(std::process::id() as i32, ty).map_err(io_err(format!("stat own {ty} namespace")))?;
    if ino == own {
        return Err(seen.unsupported(format!("descriptor of the host's {ty} namespace, which is not the tree's to carry")));
    }
    let member = table.tree.iter().copied().find(|&p| inode(p, files[0]).is_ok_and(|i| i == ino));
    let Some(member) = member else {
        return Err(seen.unsupported(format!("descriptor of a {ty} namespace no process of the tree is in")));
    };
    let member = if ty == "net" { 0 } else { member as u32 };
    Ok(NsFdImage { ns_type: ty.to_string(), ns: ino, member })
}

impl Kind for NsFd {
    fn check(&self, seen: &Seen, _f: &FileImage, table: &FileTable) -> Result<()> {
        read(seen, table).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()> {
        f.ns = Some(read(seen, table)?);
        Ok(())
    }

    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd> {
        let n = f.ns.as_ref().ok_or_else(|| EngineError::Incompatible(format!("namespace file {} names none", f.id)))?;
        if n.ns_type != "net" {
            // A stand-in: the namespace exists once its member is cloned
            // into it; each holder opens it then (`install`).
            return Ok(std::fs::File::open("/dev/null").map_err(io_err("open /dev/null as a stand-in"))?.into());
        }
        let path = match n.ns {
            0 => "/proc/thread-self/ns/net".to_string(),
            key => {
                let fd = cx.net.get(&key).ok_or_else(|| {
                    EngineError::Incompatible(format!("namespace file {}: network namespace {key} was not recreated", f.id))
                })?;
                // A description of its own, as the original had.
                format!("/proc/thread-self/fd/{}", fd.as_raw_fd())
            }
        };
        let file = std::fs::File::open(&path).map_err(io_err(format!("open {path} for namespace file {}", f.id)))?;
        Ok(file.into())
    }

    fn install(&self, _pid: i32, _r: &mut Remote, _s: Scratch, _fd: &Fd, f: &FileImage, _p: &Process) -> Result<()> {
        match f.ns.as_ref() {
            Some(n) if n.ns_type != "net" => Err(EngineError::Incompatible(format!(
                "namespace file {}: a {} namespace is installed with its member's host pid",
                f.id, n.ns_type
            ))),
            _ => Ok(()),
        }
    }
}

/// Puts at `fd` of puppet `pid` a descriptor of the namespace (not net)
/// that `f` names, which its member, restored as `member_host`, is in.
pub(super) fn install_by_member(pid: i32, r: &mut Remote, s: Scratch, fd: &Fd, f: &FileImage, member_host: i32) -> Result<()> {
    let n = f.ns.as_ref().ok_or_else(|| EngineError::Incompatible(format!("namespace file {} names none", f.id)))?;
    // The holder's /proc is still the restorer's procfs here (a procfs of
    // the tree's own is mounted once every process is shaped, see
    // ns::restore), so a host pid names the member.
    let path = format!("/proc/{member_host}/ns/{}", n.ns_type);
    let what = |step: &str| format!("{step} {path} for fd {}", fd.fd);
    let addr = put_path(pid, s, 0, &path)?;
    let new = r
        .call(libc::SYS_openat, &[libc::AT_FDCWD as u64, addr, (libc::O_RDONLY | libc::O_CLOEXEC) as u64, 0])
        .step(pid, || what("remote open"))?;
    let cloexec = if fd.cloexec { libc::O_CLOEXEC } else { 0 };
    let moved = r.call(libc::SYS_dup3, &[new, fd.fd as u64, cloexec as u64]).step(pid, || what("remote dup3"));
    r.call(libc::SYS_close, &[new]).step(pid, || what("remote close"))?;
    moved?;
    Ok(())
}

/// The network namespace of `host` (a restored process), as its nsfs
/// inode: what a restored descriptor must name.
pub(crate) fn net_inode(host: i32) -> Result<u64> {
    Ok(std::fs::metadata(format!("/proc/{host}/ns/net")).map_err(io_err(format!("stat /proc/{host}/ns/net")))?.ino())
}

#[cfg(test)]
mod tests {
    #[test]
    fn namespace_links_are_told_apart() {
        assert!(super::is_ns("net:[4026531840]"));
        assert!(super::is_ns("pid_for_children:[4026531836]"));
        assert!(!super::is_ns("socket:[1234]"));
        assert!(!super::is_ns("pipe:[1234]"));
    }
}
