//! What keeps a partition from its host: the capabilities its processes
//! may hold, and the host paths its mount namespace hides (lpm's state,
//! keys and sockets). docs/isolation.md describes the model and what it
//! does not protect against.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Capability names by number (linux/capability.h), without `CAP_`.
pub const CAP_NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The capabilities a partition's processes keep by default: Docker's
/// default set, enough for a service that runs as root and drops to a
/// user of its own, binds low ports and uses raw sockets, and nothing
/// that reaches the kernel's or the host's configuration (modules, mounts,
/// devices, tracing, time, the network's plumbing).
pub const DEFAULT_CAPS: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// How a partition is kept from its host: part of its spec, so that it
/// travels with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolation {
    /// Capabilities kept beyond [`DEFAULT_CAPS`] (`NET_ADMIN`,
    /// `CAP_SYS_PTRACE`, or `ALL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
}

/// The number of capability `name` (`CAP_NET_ADMIN`, `net_admin`).
pub fn cap_number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    CAP_NAMES.iter().position(|n| *n == bare).map(|n| n as u32)
}

impl Isolation {
    /// The capabilities the partition's processes keep, bit N for
    /// capability N; the error names the first unknown name.
    pub fn caps(&self) -> Result<u64, String> {
        let mut keep = 0u64;
        for name in DEFAULT_CAPS.iter().copied().chain(self.cap_add.iter().map(String::as_str)) {
            if name.eq_ignore_ascii_case("ALL") {
                keep |= (1u64 << CAP_NAMES.len()) - 1;
                continue;
            }
            let n = cap_number(name).ok_or_else(|| format!("unknown capability {name:?}"))?;
            keep |= 1 << n;
        }
        Ok(keep)
    }
}

/// The masks of `paths` for a partition's mount namespace, as
/// `lpm_sys::spawn::PartitionExec::masks` takes them: each path that is
/// there, resolved (a mount follows symbolic links, and mountinfo shows
/// where it lands), a directory or not, in order, without duplicates and
/// without those inside another hidden directory (hidden with it).
pub fn masks(paths: &[PathBuf]) -> Vec<(PathBuf, bool)> {
    let mut found: Vec<(PathBuf, bool)> = paths
        .iter()
        .filter_map(|p| {
            let real = std::fs::canonicalize(p).ok()?;
            let dir = std::fs::metadata(&real).ok()?.is_dir();
            Some((real, dir))
        })
        .collect();
    found.sort();
    found.dedup();
    let dirs: Vec<PathBuf> = found.iter().filter(|(_, d)| *d).map(|(p, _)| p.clone()).collect();
    found.retain(|(p, _)| !dirs.iter().any(|d| d != p && p.starts_with(d)));
    found
}

/// [`masks`] as C strings.
pub fn masks_c(paths: &[PathBuf]) -> Vec<(CString, bool)> {
    masks(paths).into_iter().filter_map(|(p, dir)| Some((CString::new(p.as_os_str().as_bytes()).ok()?, dir))).collect()
}

/// The host paths an lpmd hides from its partitions besides those it is
/// configured with: its state directory, its control socket, the
/// cluster's key, and /etc/lpm (its configuration and certificates).
pub fn host_secrets(dir: &Path, control: &Path, key: &Path) -> Vec<PathBuf> {
    vec![dir.to_path_buf(), control.to_path_buf(), key.to_path_buf(), PathBuf::from("/etc/lpm")]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_caps_and_additions() {
        let none = Isolation::default().caps().unwrap();
        assert_eq!(none.count_ones(), DEFAULT_CAPS.len() as u32);
        assert_eq!(none & (1 << 16), 0, "CAP_SYS_MODULE is not a default");
        assert_eq!(none & (1 << 21), 0, "CAP_SYS_ADMIN is not a default");
        assert_ne!(none & (1 << 13), 0, "CAP_NET_RAW is a default");
        let more = Isolation { cap_add: vec!["CAP_NET_ADMIN".into(), "sys_ptrace".into()] }.caps().unwrap();
        assert_eq!(more, none | (1 << 12) | (1 << 19));
        assert_eq!(Isolation { cap_add: vec!["ALL".into()] }.caps().unwrap(), (1 << 41) - 1);
        let e = Isolation { cap_add: vec!["CAP_NOPE".into()] }.caps().unwrap_err();
        assert!(e.contains("CAP_NOPE"), "{e}");
    }

    #[test]
    fn masks_resolve_skip_missing_and_nested() {
        let root = std::env::temp_dir().join(format!("lpm-masks-{}", std::process::id()));
        let dir = root.join("state");
        std::fs::create_dir_all(dir.join("inner")).unwrap();
        std::fs::write(root.join("key"), "k").unwrap();
        std::fs::write(dir.join("sock"), "").unwrap();
        let m = masks(&[dir.join("sock"), root.join("key"), dir.clone(), root.join("missing"), dir.join("inner"), dir.clone()]);
        assert_eq!(m, vec![(root.join("key"), false), (dir.clone(), true)]);
        assert!(host_secrets(&dir, &dir.join("s"), &root.join("key")).contains(&PathBuf::from("/etc/lpm")));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
