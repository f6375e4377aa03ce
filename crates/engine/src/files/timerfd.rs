//! timerfds: clock, settime flags, time left, period and unread
//! expirations from fdinfo.
//!
//! A relative timer continues from the time it had left at dump (the time
//! the tree spent frozen or on disk does not count); an absolute one
//! (TFD_TIMER_ABSTIME) is armed again for the same instant on its clock, so
//! expirations that fell in between are reported as ticks, as they would
//! have been. Unread expirations come back with TFD_IOC_SET_TICKS.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use lpm_image::{Fd, FileImage, Process, TimerfdImage};
use lpm_sys::misc;
use lpm_sys::remote::Remote;

use super::eventfd::field;
use super::{FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{proc, EngineError, Result, StepExt};

/// timerfd objects.
pub struct Timerfd;

const TFD_TIMER_ABSTIME: u32 = 1;
const TFD_TIMER_CANCEL_ON_SET: u32 = 2;

/// Parses "(SECONDS, NANOSECONDS)" into nanoseconds.
fn timespec(v: &str) -> Option<u64> {
    let (s, ns) = v.trim().strip_prefix('(')?.strip_suffix(')')?.split_once(',')?;
    Some(s.trim().parse::<u64>().ok()? * 1_000_000_000 + ns.trim().parse::<u64>().ok()?)
}

/// The timer as fdinfo shows it, or why it cannot be kept.
fn read(seen: &Seen) -> Result<TimerfdImage> {
    let info = proc::read(seen.pid, &format!("fdinfo/{}", seen.fd))?;
    let get = |k: &str| field(&info, k).ok_or_else(|| seen.unsupported(format!("timerfd without {k:?} in fdinfo")));
    let bad = |k: &str| seen.unsupported(format!("timerfd with an unreadable {k:?} in fdinfo"));
    let clockid: u32 = get("clockid")?.parse().map_err(|_| bad("clockid"))?;
    let settime_flags = u32::from_str_radix(get("settime flags")?, 8).map_err(|_| bad("settime flags"))?;
    let mut value_ns = timespec(get("it_value")?).ok_or_else(|| bad("it_value"))?;
    let interval_ns = timespec(get("it_interval")?).ok_or_else(|| bad("it_interval"))?;
    // A periodic timer with unread expirations stays expired (time
    // left 0) until a read moves it on; it is kept as due in one period.
    if value_ns == 0 && interval_ns != 0 {
        value_ns = interval_ns;
    }
    let ticks: u64 = get("ticks")?.parse().map_err(|_| bad("ticks"))?;
    if settime_flags & !(TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET) != 0 {
        return Err(seen.unsupported(format!("timerfd with unknown settime flags {settime_flags:#o}")));
    }
    // fdinfo shows the time left; an absolute timer is kept as the
    // instant it expires, read against the same clock now.
    let abs_ns = if value_ns == 0 {
        0
    } else {
        misc::clock_now_ns(clockid as i32).step(seen.pid, || format!("read clock {clockid} for timerfd {}", seen.fd))? + value_ns
    };
    Ok(TimerfdImage { clockid, settime_flags, value_ns, interval_ns, ticks, abs_ns })
}

impl Kind for Timerfd {
    fn check(&self, seen: &Seen, _f: &FileImage, _table: &FileTable) -> Result<()> {
        read(seen).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, _table: &mut FileTable) -> Result<()> {
        f.timerfd = Some(read(seen)?);
        Ok(())
    }

    fn open(&self, f: &FileImage, _cx: &mut OpenCx) -> Result<OwnedFd> {
        let t = f.timerfd.as_ref().ok_or_else(|| EngineError::Incompatible(format!("timerfd file {} has no timer state", f.id)))?;
        let what = |step: &str| format!("{step} of timerfd {} (clock {})", f.id, t.clockid);
        let fd = misc::timerfd_create(t.clockid as i32, libc::TFD_CLOEXEC | libc::TFD_NONBLOCK).step(0, || what("create"))?;
        if t.value_ns != 0 {
            let (flags, value) = if t.settime_flags & TFD_TIMER_ABSTIME != 0 {
                (t.settime_flags, t.abs_ns)
            } else {
                (t.settime_flags & !TFD_TIMER_CANCEL_ON_SET, t.value_ns)
            };
            misc::timerfd_settime(fd.as_fd(), flags as i32, t.interval_ns, value).step(0, || what("arm"))?;
        }
        // After arming, which resets the count.
        if t.ticks != 0 {
            misc::timerfd_set_ticks(fd.as_fd(), t.ticks).step(0, || what("set unread expirations"))?;
        }
        misc::set_fl(fd.as_raw_fd(), f.flags as i32).step(0, || what("set flags"))?;
        Ok(fd)
    }

    fn install(&self, _pid: i32, _r: &mut Remote, _s: Scratch, _fd: &Fd, _f: &FileImage, _p: &Process) -> Result<()> {
        // The timer lives in the shared file; nothing is per puppet.
        Ok(())
    }
}
