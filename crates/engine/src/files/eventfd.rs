//! eventfd counters: the count and EFD_SEMAPHORE from fdinfo, recreated
//! in the restorer with the count written back.

use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};

use lpm_image::{EventfdImage, Fd, FileImage, Process};
use lpm_sys::misc;
use lpm_sys::remote::Remote;
use rustix::event::EventfdFlags;

use super::{FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{io_err, proc, EngineError, Result, StepExt};

/// eventfd objects.
pub struct Eventfd;

/// A "key: value" field of fdinfo text.
pub(super) fn field<'a>(info: &'a str, key: &str) -> Option<&'a str> {
    info.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':'))).map(str::trim)
}

/// The counter and mode as fdinfo shows them, or why they cannot be read.
fn read(seen: &Seen) -> Result<EventfdImage> {
    let info = proc::read(seen.pid, &format!("fdinfo/{}", seen.fd))?;
    let count = field(&info, "eventfd-count")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| seen.unsupported("eventfd without a readable eventfd-count"))?;
    let semaphore = match field(&info, "eventfd-semaphore") {
        Some(v) => v == "1",
        None => return Err(seen.unsupported("eventfd without eventfd-semaphore in fdinfo (kernel too old)")),
    };
    Ok(EventfdImage { count, semaphore })
}

impl Kind for Eventfd {
    fn check(&self, seen: &Seen, _f: &FileImage, _table: &FileTable) -> Result<()> {
        read(seen).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, _table: &mut FileTable) -> Result<()> {
        f.eventfd = Some(read(seen)?);
        Ok(())
    }

    fn open(&self, f: &FileImage, _cx: &mut OpenCx) -> Result<OwnedFd> {
        let e = f.eventfd.as_ref().ok_or_else(|| EngineError::Incompatible(format!("eventfd file {} has no eventfd state", f.id)))?;
        let mut flags = EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK;
        if e.semaphore {
            flags |= EventfdFlags::SEMAPHORE;
        }
        let fd = rustix::event::eventfd(0, flags).map_err(|err| io_err(format!("eventfd for file {}", f.id))(err.into()))?;
        // Written rather than passed to eventfd(2), whose initial value is
        // only 32 bits wide.
        if e.count != 0 {
            let mut w = std::fs::File::from(fd.try_clone().map_err(io_err("dup eventfd"))?);
            w.write_all(&e.count.to_ne_bytes()).map_err(io_err(format!("set eventfd {} count to {}", f.id, e.count)))?;
        }
        misc::set_fl(fd.as_raw_fd(), f.flags as i32).step(0, || format!("set flags of eventfd {}", f.id))?;
        Ok(fd)
    }

    fn install(&self, _pid: i32, _r: &mut Remote, _s: Scratch, _fd: &Fd, _f: &FileImage, _p: &Process) -> Result<()> {
        // The counter lives in the shared file; nothing is per puppet.
        Ok(())
    }
}
