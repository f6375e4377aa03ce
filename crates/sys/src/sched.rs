//! Scheduling attributes of a thread (sched_getattr / sched_setattr), read
//! and set from outside: neither needs the thread to run, so a restore can
//! set them last, after its own remote calls, without running those in a
//! SCHED_IDLE thread.

use crate::{cvt, Error, Result};

/// `struct sched_attr` up to the utilization clamps (SCHED_ATTR_SIZE_VER1).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SchedAttr {
    /// Size of the structure the caller passes.
    pub size: u32,
    /// SCHED_OTHER, SCHED_FIFO, ...
    pub policy: u32,
    /// SCHED_FLAG_* (SCHED_FLAG_RESET_ON_FORK, ...).
    pub flags: u64,
    /// Nice value (fair policies).
    pub nice: i32,
    /// Static priority (SCHED_FIFO, SCHED_RR).
    pub priority: u32,
    /// SCHED_DEADLINE runtime, ns.
    pub runtime: u64,
    /// SCHED_DEADLINE deadline, ns.
    pub deadline: u64,
    /// SCHED_DEADLINE period, ns.
    pub period: u64,
    /// Utilization clamp, minimum.
    pub util_min: u32,
    /// Utilization clamp, maximum.
    pub util_max: u32,
}

/// SCHED_FLAG_RESET_ON_FORK.
pub const FLAG_RESET_ON_FORK: u64 = 0x01;
/// SCHED_FLAG_UTIL_CLAMP_MIN | SCHED_FLAG_UTIL_CLAMP_MAX.
pub const FLAG_UTIL_CLAMP: u64 = 0x20 | 0x40;
/// SCHED_DEADLINE.
pub const SCHED_DEADLINE: u32 = 6;

/// The scheduling attributes of thread `tid` (a host tid).
pub fn get(tid: i32) -> Result<SchedAttr> {
    let mut a = SchedAttr::default();
    let size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: the kernel writes at most `size` bytes into `a`, which is
    // a repr(C) struct of that size.
    let r = unsafe { libc::syscall(libc::SYS_sched_getattr, tid, &mut a as *mut SchedAttr, size, 0) };
    cvt(r).map_err(|e| Error::sys("sched_getattr", tid, e))?;
    Ok(a)
}

/// Sets the scheduling attributes of thread `tid`.
pub fn set(tid: i32, a: &SchedAttr) -> Result<()> {
    let mut a = *a;
    a.size = std::mem::size_of::<SchedAttr>() as u32;
    // SAFETY: the kernel reads `a.size` bytes from `a`, a repr(C) struct
    // of that size.
    let r = unsafe { libc::syscall(libc::SYS_sched_setattr, tid, &a as *const SchedAttr, 0) };
    cvt(r).map_err(|e| Error::sys("sched_setattr", tid, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout is the kernel's: 56 bytes, read back as set.
    #[test]
    fn own_attributes_round_trip() {
        assert_eq!(std::mem::size_of::<SchedAttr>(), 56);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        let a = get(tid).unwrap();
        assert_eq!(a.policy, libc::SCHED_OTHER as u32);
        let batch = SchedAttr { policy: libc::SCHED_BATCH as u32, nice: a.nice, ..a };
        set(tid, &batch).unwrap();
        assert_eq!(get(tid).unwrap().policy, libc::SCHED_BATCH as u32);
        set(tid, &a).unwrap();
    }
}
