//! A volume's identity that holds across machines: a migration's target
//! must see the very directory the source's partition uses (shared
//! storage), not one that merely has its path.
//!
//! Device and inode numbers are one kernel's: two machines mounting the
//! same NFS export or SAN filesystem give it different ones, and two
//! unrelated disks may share them. The identity is instead:
//! - the filesystem's UUID where it has one (`FS_IOC_GETFSUUID`: ext4,
//!   xfs, btrfs): the target's filesystem at that path must have the same;
//! - always, a marker the source writes into the directory at validation
//!   (`.lpm-volume-PARTITION`, a fresh random token each time, replaced
//!   atomically) and the target reads back: only the same directory, seen
//!   now, holds it. This is what proves it for network filesystems and
//!   tmpfs (no UUID, or one per mount), and what tells two directories of
//!   one filesystem apart.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The marker's file name in the volume, before the partition's name.
pub const MARKER_PREFIX: &str = ".lpm-volume-";

/// What the source knows of one volume, sent to the target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeId {
    /// The volume's path (the same on every host).
    pub path: PathBuf,
    /// The UUID of its filesystem in hex; empty when it has none.
    #[serde(default)]
    pub uuid: String,
    /// Its filesystem's type, for messages (`ext4`, `nfs`, ...).
    #[serde(default)]
    pub fstype: String,
    /// The marker's file name in the volume.
    pub marker: String,
    /// What the source wrote in it.
    pub token: String,
}

/// Errors of reading a volume's identity; each names the volume.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A step on the volume failed.
    #[error("volume {path}: {op}")]
    Io {
        /// The volume.
        path: PathBuf,
        /// The step.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Filesystem type names by statfs magic, for messages.
fn fstype_name(magic: i64) -> String {
    let known: &[(i64, &str)] = &[
        (0xEF53, "ext4"),
        (0x5846_5342, "xfs"),
        (0x9123_683E, "btrfs"),
        (0x6969, "nfs"),
        (0x0102_1994, "tmpfs"),
        (0x794C_7630, "overlay"),
        (0xFF53_4D42, "cifs"),
        (0xFE53_4D42, "smb2"),
        (0x6573_5546, "fuse"),
        (0x00C3_6400, "ceph"),
        (0x0116_1970, "gfs2"),
        (0x7461_636F, "ocfs2"),
    ];
    known.iter().find(|(m, _)| *m == magic).map(|(_, n)| n.to_string()).unwrap_or_else(|| format!("filesystem {magic:#x}"))
}

/// (UUID in hex or "", type name) of the filesystem at `path`.
fn filesystem(path: &Path) -> Result<(String, String), VolumeError> {
    let io = |op| move |source| VolumeError::Io { path: path.to_path_buf(), op, source };
    let dir = std::fs::File::open(path).map_err(io("open"))?;
    let uuid = lpm_sys::fs::fs_uuid(dir.as_fd()).map_err(io("read its filesystem's UUID"))?.map(|u| hex(&u)).unwrap_or_default();
    let st = rustix::fs::fstatfs(&dir).map_err(|e| io("statfs")(e.into()))?;
    Ok((uuid, fstype_name(st.f_type as i64)))
}

/// The identity of volume `path` of `partition`, on the source: its
/// filesystem's UUID, and a fresh marker written into it.
pub fn identify(path: &Path, partition: &str) -> Result<VolumeId, VolumeError> {
    let io = |op| move |source| VolumeError::Io { path: path.to_path_buf(), op, source };
    let (uuid, fstype) = filesystem(path)?;
    let mut raw = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut raw)).map_err(io("read /dev/urandom"))?;
    let token = hex(&raw);
    let marker = format!("{MARKER_PREFIX}{partition}");
    // Written beside and renamed over: the target never reads half a token.
    let tmp = path.join(format!("{marker}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io("create its marker"))?;
    f.write_all(token.as_bytes()).and_then(|()| f.sync_all()).map_err(io("write its marker"))?;
    std::fs::rename(&tmp, path.join(&marker)).map_err(io("rename its marker into place"))?;
    Ok(VolumeId { path: path.to_path_buf(), uuid, fstype, token, marker })
}

/// The target's check of `id` at `here` (the same path, or another for
/// tests): Ok with what was found the same, or Err with why it is not the
/// source's volume; both name the volume.
pub fn check_at(id: &VolumeId, here: &Path) -> Result<String, String> {
    let shown = id.path.display();
    let (uuid, fstype) = filesystem(here).map_err(|e| format!("{e:#}"))?;
    if !id.uuid.is_empty() && uuid != id.uuid {
        let found = if uuid.is_empty() { format!("a {fstype} without one") } else { format!("UUID {uuid}") };
        return Err(format!("volume {shown}: its filesystem is UUID {} on the source, {found} here (another filesystem)", id.uuid));
    }
    if id.marker.contains('/') || !id.marker.starts_with(MARKER_PREFIX) {
        return Err(format!("volume {shown}: the source named marker {:?}, not one of lpm's", id.marker));
    }
    let read = std::fs::read_to_string(here.join(&id.marker));
    match read {
        Ok(t) if t == id.token => {
            let fs = if id.uuid.is_empty() { id.fstype.clone() } else { format!("{} UUID {}", id.fstype, id.uuid) };
            Ok(format!("volume {shown} is the same volume ({fs}; the source's marker read back)"))
        }
        Ok(_) => Err(format!("volume {shown}: its marker {} holds another token here: another directory, not the source's", id.marker)),
        Err(e) => Err(format!("volume {shown}: the source's marker {} is not here ({e}): another directory, not the source's", id.marker)),
    }
}

/// [`check_at`] at the volume's own path.
pub fn check(id: &VolumeId) -> Result<String, String> {
    check_at(id, &id.path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_volume_passes_and_a_lookalike_is_refused_by_name() {
        let root = std::env::temp_dir().join(format!("lpm-volume-{}", std::process::id()));
        let (vol, copy) = (root.join("vol"), root.join("copy"));
        for d in [&vol, &copy] {
            std::fs::create_dir_all(d.join("data")).unwrap();
            std::fs::write(d.join("data/a"), "same").unwrap();
        }
        let id = identify(&vol, "web").unwrap();
        assert_eq!(id.marker, ".lpm-volume-web");
        let ok = check(&id).unwrap();
        assert!(ok.contains(&vol.display().to_string()) && ok.contains("same volume"), "{ok}");
        // Same layout, same filesystem, even a marker of the same name
        // from an earlier validation: not the directory.
        std::fs::write(copy.join(".lpm-volume-web"), "0123").unwrap();
        let e = check_at(&id, &copy).unwrap_err();
        assert!(e.contains(&vol.display().to_string()) && e.contains("another directory"), "{e}");
        std::fs::remove_file(copy.join(".lpm-volume-web")).unwrap();
        let e = check_at(&id, &copy).unwrap_err();
        assert!(e.contains("is not here"), "{e}");
        // A filesystem with another UUID is refused before the marker.
        let other = VolumeId { uuid: "00112233445566778899aabbccddeeff".into(), ..id.clone() };
        let e = check(&other).unwrap_err();
        assert!(e.contains("UUID 00112233445566778899aabbccddeeff on the source"), "{e}");
        // A new validation replaces the token: the old one no longer holds.
        let again = identify(&vol, "web").unwrap();
        assert_ne!(again.token, id.token);
        assert!(check(&id).is_err());
        assert!(check(&again).is_ok());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
