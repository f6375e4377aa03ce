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
    /// Run in a user namespace of its own, its root an unprivileged id of
    /// the host (`--userns`). Absent from the specs of other partitions,
    /// so older agents read them unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<UserNs>,
}

/// Ids a partition's user namespace maps: uid and gid 0 to
/// [`USERNS_IDS`]` - 1` inside are `first` onwards on the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserNs {
    /// The host id that is root inside; 0 asks the host that creates the
    /// partition to pick a free range ([`allocate`]), which it then
    /// records here so that a restart keeps it.
    #[serde(default)]
    pub first: u32,
}

/// Ids a partition's user namespace maps: 65536, as /etc/subuid gives
/// each user (SUB_UID_COUNT), so that every 16-bit id a distribution
/// uses exists inside.
pub const USERNS_IDS: u32 = 65536;

/// Where an lpmd's user namespace ranges start unless configured
/// (`userns_base`): above the ranges useradd hands out in /etc/subuid and
/// /etc/subgid (SUB_UID_MAX 600100000 by default), as LXD's 1000000000.
pub const DEFAULT_USERNS_BASE: u32 = 1_000_000_000;

impl UserNs {
    /// The host ids it maps.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.first as u64..self.first as u64 + USERNS_IDS as u64
    }

    /// The map the init is spawned with.
    pub fn id_map(&self) -> lpm_sys::spawn::IdMap {
        lpm_sys::spawn::IdMap { first: self.first, count: USERNS_IDS }
    }

    /// Checks a recorded range: not root's, within 32 bits.
    pub fn validate(&self) -> Result<(), String> {
        if self.first == 0 {
            return Err("no id range allocated (host id 0 would be root on the host)".into());
        }
        if self.range().end > u32::MAX as u64 {
            return Err(format!("ids {} to {} run past the largest id", self.first, self.range().end - 1));
        }
        Ok(())
    }
}

/// The first free range of [`USERNS_IDS`] ids from `base`, in steps of
/// as many: one that no range of `used` overlaps, nor any range of
/// `reserved` (the host's /etc/subuid and /etc/subgid entries, given as
/// start and count).
pub fn allocate(base: u32, used: &[UserNs], reserved: &[(u64, u64)]) -> Option<UserNs> {
    let overlaps = |a: &std::ops::Range<u64>, b: &std::ops::Range<u64>| a.start < b.end && b.start < a.end;
    let mut first = (base as u64).max(USERNS_IDS as u64);
    while first + USERNS_IDS as u64 <= u32::MAX as u64 {
        let r = first..first + USERNS_IDS as u64;
        let clash = used.iter().any(|u| overlaps(&u.range(), &r)) || reserved.iter().any(|&(s, n)| overlaps(&(s..s + n), &r));
        if !clash {
            return Some(UserNs { first: first as u32 });
        }
        first += USERNS_IDS as u64;
    }
    None
}

/// The subordinate id ranges (start, count) of a /etc/subuid or
/// /etc/subgid text (`name:start:count` lines); other lines are skipped.
pub fn subid_ranges(text: &str) -> Vec<(u64, u64)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':');
            let (_, start, count) = (f.next()?, f.next()?, f.next()?);
            Some((start.parse().ok()?, count.parse().ok()?))
        })
        .collect()
}

/// The ranges /etc/subuid and /etc/subgid give this host's users (none
/// when the files are absent).
pub fn host_subid_ranges() -> Vec<(u64, u64)> {
    ["/etc/subuid", "/etc/subgid"].iter().filter_map(|p| std::fs::read_to_string(p).ok()).flat_map(|t| subid_ranges(&t)).collect()
}

/// Gives the files under `dir` to a user namespace's ids: every uid and
/// gid below [`USERNS_IDS`] moves by `ns.first` (root's files become the
/// namespace's root's), others stay (ids of the range already, or
/// outside anything the namespace maps). Symbolic links are changed, not
/// followed; other mounts under `dir` are not entered. The set-user-ID
/// and set-group-ID bits, which chown clears, are put back. Returns how
/// many entries changed.
pub fn shift_ownership(dir: &Path, ns: UserNs) -> std::io::Result<u64> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let shift = |id: u32| if id < USERNS_IDS { id + ns.first } else { id };
    let dev = std::fs::symlink_metadata(dir)?.dev();
    let mut todo = vec![dir.to_path_buf()];
    let mut changed = 0;
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
        if m.dev() != dev {
            continue;
        }
        let (uid, gid) = (shift(m.uid()), shift(m.gid()));
        if (uid, gid) != (m.uid(), m.gid()) {
            std::os::unix::fs::lchown(&p, Some(uid), Some(gid))
                .map_err(|e| std::io::Error::new(e.kind(), format!("chown {}: {e}", p.display())))?;
            if !m.file_type().is_symlink() && m.mode() & 0o6000 != 0 {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            }
            changed += 1;
        }
        if m.is_dir() {
            for e in std::fs::read_dir(&p)? {
                todo.push(e?.path());
            }
        }
    }
    Ok(changed)
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
        let more = Isolation { cap_add: vec!["CAP_NET_ADMIN".into(), "sys_ptrace".into()], ..Default::default() }.caps().unwrap();
        assert_eq!(more, none | (1 << 12) | (1 << 19));
        assert_eq!(Isolation { cap_add: vec!["ALL".into()], ..Default::default() }.caps().unwrap(), (1 << 41) - 1);
        let e = Isolation { cap_add: vec!["CAP_NOPE".into()], ..Default::default() }.caps().unwrap_err();
        assert!(e.contains("CAP_NOPE"), "{e}");
    }

    #[test]
    fn userns_ranges_are_allocated_without_overlap() {
        let base = DEFAULT_USERNS_BASE;
        let a = allocate(base, &[], &[]).unwrap();
        assert_eq!(a.first, base);
        let b = allocate(base, &[a], &[]).unwrap();
        assert_eq!(b.first, base + USERNS_IDS);
        // A gap left by a deleted partition is reused; a reserved
        // /etc/subuid range is skipped, even one not on a step.
        let c = allocate(base, &[b], &[]).unwrap();
        assert_eq!(c.first, base);
        let reserved = subid_ranges("root:1000000100:10\n# comment\nbad line\nalice:100000:65536\n");
        assert_eq!(reserved, vec![(1_000_000_100, 10), (100_000, 65536)]);
        assert_eq!(allocate(base, &[b], &reserved).unwrap().first, base + 2 * USERNS_IDS);
        // Never host root's range, never past 32 bits.
        assert_eq!(allocate(0, &[], &[]).unwrap().first, USERNS_IDS);
        assert_eq!(allocate(u32::MAX - 10, &[], &[]), None);
        assert!(UserNs { first: 0 }.validate().is_err());
        assert!(UserNs { first: u32::MAX - 100 }.validate().is_err());
        assert!(a.validate().is_ok());
    }

    #[test]
    fn ownership_shifts_into_the_range_once() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let root = std::env::temp_dir().join(format!("lpm-shift-{}", std::process::id()));
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::write(root.join("sub/f"), "x").unwrap();
        std::fs::write(root.join("suid"), "x").unwrap();
        std::fs::set_permissions(root.join("suid"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::lchown(root.join("sub/f"), Some(1000), Some(100)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("link")).unwrap();
        let ns = UserNs { first: DEFAULT_USERNS_BASE };
        assert_eq!(shift_ownership(&root, ns).unwrap(), 5);
        let m = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!((m("").uid(), m("").gid()), (ns.first, ns.first));
        assert_eq!((m("sub/f").uid(), m("sub/f").gid()), (ns.first + 1000, ns.first + 100));
        assert_eq!(m("suid").mode() & 0o7777, 0o4755);
        assert_eq!(m("link").uid(), ns.first);
        assert_eq!(std::fs::metadata("/etc/passwd").unwrap().uid(), 0, "a link is not followed");
        // Again: nothing left to move.
        assert_eq!(shift_ownership(&root, ns).unwrap(), 0);
        std::fs::remove_dir_all(&root).unwrap();
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
