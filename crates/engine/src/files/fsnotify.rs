//! What inotify watches and fanotify marks share: naming the inode, mount
//! or filesystem they are on as the process holding them sees it, and
//! finding it again through the restored process.
//!
//! A process may live in a mount namespace of its own (every partition
//! does) and under a root of its own. The dump resolves everything
//! through that process: its mountinfo names the mounts, a mount point is
//! opened through /proc/PID/root (which enters the process's mount
//! namespace), and the inode a file handle names is opened through that
//! mount, so the path it reads back is the process's. The restore adds
//! every watch and mark through /proc/PID/root of the restored process,
//! in the mount namespace the restore made for it, once its mounts and
//! root are in place; a mount mark so lands on the partition's own mount,
//! not on the host's. Each path is checked against the recorded inode on
//! both sides: one that leads elsewhere is refused, never followed.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::MetadataExt;

use lpm_sys::misc;

use super::Seen;
use crate::{io_err, proc, Result, StepExt};

/// An inode named by a file handle, as the process sees it.
pub(super) struct Named {
    /// Its path from the process's root (for an unlinked inode, the name
    /// it had, without " (deleted)").
    pub path: String,
    /// It has no name any more.
    pub unlinked: bool,
}

/// The kernel's s_dev of fdinfo (major << 20 | minor) as st_dev.
pub(super) fn dev_of(sdev: u64) -> u64 {
    libc::makedev((sdev >> 20) as u32, (sdev & 0xfffff) as u32)
}

/// The mount point of the first mount in `mountinfo` whose field `col`
/// is `value`.
pub(super) fn mount_point(mountinfo: &str, col: usize, value: &str) -> Option<String> {
    mountinfo.lines().find_map(|m| {
        let f: Vec<&str> = m.split_whitespace().collect();
        (f.get(col) == Some(&value)).then(|| f.get(4).map(|s| s.to_string())).flatten()
    })
}

/// `path` (seen from the process's root) through /proc/`pid`/root, so it
/// is looked up in that process's mount namespace and under its root.
/// The root itself keeps a trailing slash: the magic link is followed
/// even where the last link of a path is not (IN_DONT_FOLLOW, lstat).
pub(super) fn through(pid: i32, path: &str) -> String {
    format!("/proc/{pid}/root{}", if path == "/" { "/" } else { path })
}

/// Names inodes and mounts as the process of one descriptor sees them,
/// reading its mountinfo and root once and opening each filesystem's
/// mount once, however many watches or marks there are (a dump does it
/// while the tree is frozen).
pub(super) struct Resolver<'a> {
    seen: &'a Seen<'a>,
    /// /proc/PID/mountinfo of the process.
    pub mountinfo: String,
    /// Its root as lpm reads the magic link.
    root: String,
    /// A descriptor of a mount of each device met, by st_dev.
    mounts: HashMap<u64, std::fs::File>,
}

impl<'a> Resolver<'a> {
    /// Reads what the process of `seen` sees (`seen.ns_pid`).
    pub fn new(seen: &'a Seen<'a>) -> Result<Resolver<'a>> {
        let pid = seen.ns_pid;
        Ok(Resolver { seen, mountinfo: proc::read(pid, "mountinfo")?, root: proc::link(pid, "root")?, mounts: HashMap::new() })
    }

    /// A path as lpm reads it from a magic link (from lpm's root, or from
    /// the root of another mount namespace), seen from the process's
    /// root, or None when it is outside that root.
    fn in_root(&self, path: &str) -> Option<String> {
        if self.root == "/" {
            return Some(path.to_string());
        }
        match path.strip_prefix(&self.root) {
            Some("") => Some("/".into()),
            Some(rest) if rest.starts_with('/') => Some(rest.to_string()),
            _ => None,
        }
    }

    /// The inode file handle `handle` of device `sdev` names, as the
    /// process sees it; `what` names the watch or mark in refusals.
    pub fn by_handle(&mut self, what: &str, sdev: u64, handle_type: i32, handle: &[u8]) -> Result<Named> {
        let (seen, pid) = (self.seen, self.seen.ns_pid);
        let dev = dev_of(sdev);
        if !self.mounts.contains_key(&dev) {
            let wanted = format!("{}:{}", libc::major(dev), libc::minor(dev));
            let mount = mount_point(&self.mountinfo, 2, &wanted)
                .ok_or_else(|| seen.unsupported(format!("{what} on device {wanted}, which is not mounted where pid {pid} sees")))?;
            // Not O_PATH: open_by_handle_at does not take such a descriptor.
            let at = through(pid, &mount);
            let mfd =
                std::fs::File::open(&at).map_err(io_err(format!("open mount {at} for {what} of fd {} of pid {}", seen.fd, seen.pid)))?;
            self.mounts.insert(dev, mfd);
        }
        let mfd = &self.mounts[&dev];
        let fd = misc::open_by_handle(mfd.as_fd(), handle_type, handle, libc::O_PATH | libc::O_CLOEXEC)
            .step(seen.pid, || format!("open the inode of {what} of fd {}", seen.fd))?;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
            .map_err(io_err(format!("name the inode of {what}")))?
            .to_string_lossy()
            .into_owned();
        let (name, unlinked) = match link.strip_suffix(" (deleted)") {
            Some(name) => (name, true),
            None => (link.as_str(), false),
        };
        if !name.starts_with('/') {
            return Err(seen.unsupported(format!("{what} on an inode with no path ({link})")));
        }
        let path =
            self.in_root(name).ok_or_else(|| seen.unsupported(format!("{what} on {name}, which is outside the root of pid {pid}")))?;
        Ok(Named { path, unlinked })
    }

    /// The mount point of mount `id` as the process sees it, or why it
    /// cannot be named there: not one of its mounts, or covered by
    /// another mount at the same point (a path would reach the one on
    /// top).
    pub fn mount_of(&self, id: u64) -> std::result::Result<String, String> {
        let pid = self.seen.ns_pid;
        let Some(point) = mount_point(&self.mountinfo, 0, &id.to_string()) else {
            return Err(format!("mount {id}, which is not in the mount namespace of pid {pid}"));
        };
        let mut top = self.mountinfo.lines().filter_map(|m| {
            let f: Vec<&str> = m.split_whitespace().collect();
            (f.get(4) == Some(&point.as_str())).then(|| f.first().map(|s| s.to_string())).flatten()
        });
        match top.next_back() {
            Some(t) if t == id.to_string() => Ok(point),
            _ => Err(format!("mount {id} at {point}, which another mount covers")),
        }
    }
}

/// Whether `path` (seen from the root of `pid`) leads to inode `ino` of
/// device `dev`, without following a last symbolic link.
pub(super) fn leads_to(pid: i32, path: &str, dev: u64, ino: u64) -> bool {
    std::fs::symlink_metadata(through(pid, path)).is_ok_and(|m| m.ino() == ino && m.dev() == dev)
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_points_are_found_by_id_and_device() {
        let mi = "24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw\n27 1 254:0 / / rw - ext4 /dev/vda rw\n";
        assert_eq!(super::mount_point(mi, 0, "24").as_deref(), Some("/dev"));
        assert_eq!(super::mount_point(mi, 2, "254:0").as_deref(), Some("/"));
        assert_eq!(super::mount_point(mi, 0, "99"), None);
    }

    #[test]
    fn paths_go_through_the_process_root() {
        assert_eq!(super::through(7, "/"), "/proc/7/root/");
        assert_eq!(super::through(7, "/tmp/x"), "/proc/7/root/tmp/x");
    }
}
