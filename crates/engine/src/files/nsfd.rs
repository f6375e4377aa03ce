//! Namespace descriptors: a process holding /proc/PID/ns/net open (to
//! setns into it later, or to keep the namespace alive).
//!
//! Kept: network namespaces the tree owns. The restore recreates those
//! before any file is opened (`ns::create_net`), so the descriptor is a
//! new description of the recreated namespace, whoever holds it; a
//! partition's own namespace, given to the restore, is the one the
//! restorer's thread is in while it opens files.
//!
//! Refused by name: a namespace outside the tree (the host's, or another
//! tree's): on the target of a migration there is no such namespace to
//! name, and on the same host a restored tree holding the host's would
//! make what it does there reach outside the image's state; a network
//! namespace no process of the tree is in (kept alive by the descriptor
//! or a bind mount only: nothing records what it holds); and the other
//! types (mnt, pid, uts, ipc, user, cgroup, time), whose restored
//! namespaces exist only once the puppets are cloned into them, after the
//! restorer opens its files.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use lpm_image::{Fd, FileImage, NsFdImage, Process};
use lpm_sys::remote::Remote;

use super::{FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{io_err, EngineError, Result};

/// Namespace descriptors.
pub struct NsFd;

/// The types /proc/PID/ns shows, as a descriptor's link names them.
const TYPES: [&str; 10] = ["net", "mnt", "pid", "uts", "ipc", "user", "cgroup", "time", "pid_for_children", "time_for_children"];

/// Whether a descriptor's link names a namespace ("net:[4026531840]").
pub(super) fn is_ns(link: &str) -> bool {
    link.split_once(":[").is_some_and(|(t, rest)| TYPES.contains(&t) && rest.ends_with(']'))
}

/// The namespace a descriptor names, or why it cannot be kept.
fn read(seen: &Seen, table: &FileTable) -> Result<NsFdImage> {
    let ty = seen.link.split(':').next().unwrap_or_default();
    if ty != "net" {
        return Err(seen.unsupported(
            format!(
                "descriptor of a {ty} namespace: only network namespaces are kept (the others exist only once the restored processes are"
            ) + " cloned into them)",
        ));
    }
    let ino = seen.st.ino();
    let inode = |pid: i32| std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
    let own = inode(std::process::id() as i32).map_err(io_err("stat own network namespace"))?;
    if ino == own {
        return Err(seen.unsupported("descriptor of the host's network namespace, which is not the tree's to carry"));
    }
    if !table.tree.iter().any(|&p| inode(p).is_ok_and(|i| i == ino)) {
        return Err(seen.unsupported("descriptor of a network namespace no process of the tree is in"));
    }
    Ok(NsFdImage { ns_type: ty.to_string(), ns: ino })
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

    fn install(&self, _pid: i32, _r: &mut Remote, _s: Scratch, _fd: &Fd, _f: &FileImage, _p: &Process) -> Result<()> {
        Ok(())
    }
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
