//! Regular files and directories reached by path, unlinked files saved by
//! content and recreated as "ghosts", and stateless character devices.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use lpm_image::{Fd, FileImage, FileKind, Process};
use lpm_sys::remote::Remote;

use super::{open_path, FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{io_err, EngineError, Result};

/// Largest unlinked file whose content is saved in the image.
const MAX_GHOST: u64 = 64 << 20;
/// Character devices (major 1: null, zero, full, random, urandom, ...) that
/// have no state and exist on every host.
const MEM_MAJOR: u32 = 1;

/// Files reached by path.
pub struct Regular;

fn seek(fd: &OwnedFd, pos: u64, what: &str) -> Result<()> {
    // lseek through std: a File borrowed for the call.
    let f = std::fs::File::from(fd.try_clone().map_err(io_err(format!("dup {what}")))?);
    use std::io::Seek;
    (&f).seek(std::io::SeekFrom::Start(pos)).map_err(io_err(format!("seek {what} to {pos}")))?;
    Ok(())
}

/// Recreates an unlinked file: at its own path when that is free, so the
/// fd's link reads as before ("PATH (deleted)"), beside it otherwise.
fn ghost(f: &FileImage) -> Result<OwnedFd> {
    let path = std::path::Path::new(&f.path);
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let tmp =
        if path.symlink_metadata().is_err() { path.to_path_buf() } else { dir.join(format!(".lpm-ghost-{}-{nanos}", std::process::id())) };
    let mut w = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp).map_err(io_err(format!("create {}", tmp.display())))?;
    let r = w
        .write_all(&f.content)
        .and_then(|_| w.set_permissions(std::fs::Permissions::from_mode(f.mode & 0o7777)))
        .map_err(io_err(format!("write {}", tmp.display())))
        .and_then(|_| open_path(&tmp.to_string_lossy(), f.flags));
    let _ = std::fs::remove_file(&tmp);
    r
}

/// The refusals of a file reached by path, an unlinked file or a
/// character device.
fn rules(seen: &Seen, kind: Option<FileKind>) -> Result<()> {
    let st = seen.st;
    match kind {
        Some(FileKind::CharDevice) => {
            let major = libc::major(st.rdev());
            if major != MEM_MAJOR {
                let minor = libc::minor(st.rdev());
                // Pty ends are the Tty kind (tty.rs); other terminals
                // are named as such.
                let what = match (major, minor) {
                    (4 | 5, _) => "terminal".to_string(),
                    _ => "character device".to_string(),
                };
                return Err(seen.unsupported(format!("{what} {major}:{minor}")));
            }
        }
        Some(FileKind::Unlinked) => {
            if !st.file_type().is_file() || st.len() > MAX_GHOST {
                return Err(seen.unsupported("unlinked and too large to save (or not a regular file)"));
            }
        }
        _ => match std::fs::metadata(seen.link) {
            Ok(m) if m.ino() == st.ino() && m.dev() == st.dev() => {}
            _ => return Err(seen.unsupported("path no longer leads to the open file")),
        },
    }
    Ok(())
}

impl Kind for Regular {
    fn check(&self, seen: &Seen, f: &FileImage, _table: &FileTable) -> Result<()> {
        rules(seen, FileKind::try_from(f.kind).ok())
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, _table: &mut FileTable) -> Result<()> {
        let kind = FileKind::try_from(f.kind).ok();
        rules(seen, kind)?;
        match kind {
            Some(FileKind::CharDevice) => f.rdev = seen.st.rdev(),
            Some(FileKind::Unlinked) => {
                f.path = seen.link.trim_end_matches(" (deleted)").to_string();
                std::fs::File::open(format!("/proc/{}/fd/{}", seen.pid, seen.fd))
                    .and_then(|mut h| h.read_to_end(&mut f.content))
                    .map_err(io_err(format!("read unlinked file of fd {} of pid {}", seen.fd, seen.pid)))?;
            }
            _ => {}
        }
        Ok(())
    }

    fn open(&self, f: &FileImage, _cx: &mut OpenCx) -> Result<OwnedFd> {
        match FileKind::try_from(f.kind) {
            Ok(FileKind::CharDevice) => {
                let fd = open_path(&f.path, f.flags)?;
                let st = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(io_err(format!("stat {}", f.path)))?;
                if st.rdev() != f.rdev {
                    return Err(EngineError::Incompatible(format!(
                        "{} is device {:#x} here, {:#x} in the image",
                        f.path,
                        st.rdev(),
                        f.rdev
                    )));
                }
                Ok(fd)
            }
            Ok(FileKind::Unlinked) => {
                let fd = ghost(f)?;
                seek(&fd, f.pos, &f.path)?;
                Ok(fd)
            }
            _ => {
                let fd = open_path(&f.path, f.flags)?;
                seek(&fd, f.pos, &f.path)?;
                Ok(fd)
            }
        }
    }

    fn install(&self, _pid: i32, _r: &mut Remote, _s: Scratch, _fd: &Fd, _f: &FileImage, _p: &Process) -> Result<()> {
        // Opened, positioned and installed already: nothing lives in the
        // puppet's own tables.
        Ok(())
    }
}
