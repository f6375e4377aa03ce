//! signalfds: the mask of signals they read. The signals themselves stay
//! pending in the task and are restored with it.

use std::os::fd::{AsRawFd, OwnedFd};

use lpm_image::{Fd, FileImage, Process, SignalfdImage};
use lpm_sys::misc;
use lpm_sys::remote::Remote;

use super::eventfd::field;
use super::{FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{proc, EngineError, Result, StepExt};

/// signalfd objects.
pub struct Signalfd;

/// The mask as fdinfo shows it, or why it cannot be read.
fn read(seen: &Seen) -> Result<SignalfdImage> {
    let info = proc::read(seen.pid, &format!("fdinfo/{}", seen.fd))?;
    let sigmask = field(&info, "sigmask")
        .and_then(|v| u64::from_str_radix(v, 16).ok())
        .ok_or_else(|| seen.unsupported("signalfd without a readable sigmask in fdinfo"))?;
    Ok(SignalfdImage { sigmask })
}

impl Kind for Signalfd {
    fn check(&self, seen: &Seen, _f: &FileImage, _table: &FileTable) -> Result<()> {
        read(seen).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, _table: &mut FileTable) -> Result<()> {
        f.signalfd = Some(read(seen)?);
        Ok(())
    }

    fn open(&self, f: &FileImage, _cx: &mut OpenCx) -> Result<OwnedFd> {
        let s = f.signalfd.as_ref().ok_or_else(|| EngineError::Incompatible(format!("signalfd file {} has no mask", f.id)))?;
        let fd = misc::signalfd(s.sigmask, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK)
            .step(0, || format!("signalfd for file {} (mask {:#x})", f.id, s.sigmask))?;
        misc::set_fl(fd.as_raw_fd(), f.flags as i32).step(0, || format!("set flags of signalfd {}", f.id))?;
        Ok(fd)
    }

    fn install(&self, _pid: i32, _r: &mut Remote, _s: Scratch, _fd: &Fd, _f: &FileImage, _p: &Process) -> Result<()> {
        // The mask lives in the shared file; nothing is per puppet.
        Ok(())
    }
}
