//! Checkpoint and restore of Linux process trees.
//!
//! [`checkpoint`] freezes a tree with ptrace, records everything visible
//! from outside (/proc, ptrace regsets, process_vm_readv) and runs syscalls
//! inside the stopped tasks for the little that is visible only from inside.
//! [`restore`] rebuilds the tree from outside: puppets created with clone3
//! and set_tid are reshaped by remote syscalls into the recorded tasks. Each
//! kind of kernel resource has its module holding both directions.
//!
//! Live migration uses the same two halves split at their seams:
//! [`stop_tree`] / [`StoppedTree::dump`] with [`DumpOptions`] (precopied
//! pages, [`After::Frozen`], which lets go of the tree's file locks and
//! FIFO data into a [`Handoff`]) on the source, [`thaw_tree`] (giving
//! them back) or [`kill_frozen_tree`] once the handover is decided, and
//! [`restore_held`] / [`Held::release`] with [`RestoreOptions`] (the
//! partition's network namespace and cgroups) on the target, or
//! [`Held::park`] (complete, frozen in its cgroup, traced by nobody: it
//! outlives the agent) and [`Parked::run`] once the source decided.
//!
//! [`inspect`] applies the checkpoint's refusal rules to a running tree
//! without stopping it, for a migration's validation: each rule is one
//! piece of code that the dump and the inspection both call.

#![forbid(unsafe_code)]

pub mod ahead;
mod cow;
pub mod cpu;
mod dirty;
mod dump;
mod files;
mod handoff;
pub mod hugetlb;
mod inspect;
mod ipc;
mod lazy;
mod locks;
mod mem;
mod netlock;
mod ns;
pub mod proc;
mod restore;
mod seccomp;
mod stop;
pub mod support;
mod task;
mod timers;
mod verify;
mod zombie;

use std::path::PathBuf;

pub use ahead::{Ahead, AheadOutcome};
pub use cow::{read_shared_pages, SharedPages};
pub use dirty::{shm_object, Dirty, DirtyTracker, ShmRef};
pub use dump::{checkpoint, checkpoint_with, After, CheckpointOptions, CheckpointStats, DumpOptions, PrecopiedShm};
pub use handoff::{thaw_tree, HandbackError, Handoff};
pub use inspect::{inspect, passing, Inspection, Refusal};
pub use lazy::{FillPart, FillStats, LazyFill};
pub use restore::{restore, restore_held, restore_held_with, Held, Parked, ParkedConnection, RestoreOptions, Restored, Vessel};
pub use stop::{kill_frozen_tree, stop_tree, StoppedTree};
pub use verify::{Mismatch, SABOTAGE_ENV};

/// Errors of the engine; each names the task and the step.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A resource the engine cannot checkpoint; nothing was harmed.
    #[error("pid {pid}: unsupported {kind}: {what}")]
    Unsupported {
        /// The process.
        pid: i32,
        /// The kind of resource (file descriptor, memory area, ...).
        kind: &'static str,
        /// Which one (fd number and target, address range and name).
        what: String,
    },
    /// A resource the engine cannot checkpoint in the state it is in at
    /// this moment (data queued, a connection waiting to be accepted, a
    /// lock request waiting): the same resource may pass a moment later.
    /// Nothing was harmed.
    #[error("pid {pid}: unsupported {kind} at this moment: {what}")]
    Transient {
        /// The process.
        pid: i32,
        /// The kind of resource (file descriptor, file lock, ...).
        kind: &'static str,
        /// Which one, and the state that is refused.
        what: String,
    },
    /// The process cannot be checkpointed at all.
    #[error("pid {pid}: {why}")]
    BadTarget {
        /// The pid given.
        pid: i32,
        /// Why.
        why: String,
    },
    /// A /proc file could not be read.
    #[error("read {path}")]
    Proc {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A /proc file did not parse.
    #[error("cannot parse {what}")]
    Parse {
        /// The file.
        what: String,
    },
    /// A kernel call failed at a named step.
    #[error("pid {pid}: {step}")]
    Step {
        /// The task.
        pid: i32,
        /// The step.
        step: String,
        /// The cause.
        #[source]
        source: lpm_sys::Error,
    },
    /// An I/O error on a named object.
    #[error("{what}")]
    Io {
        /// What was being done, on which object.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The image is unreadable or corrupt.
    #[error(transparent)]
    Image(#[from] lpm_image::ImageError),
    /// The image cannot be restored on this host.
    #[error("cannot restore here: {0}")]
    Incompatible(String),
    /// The restored tree differs from its image (or could not be read
    /// back): every difference, naming process, object and field.
    #[error("the restored tree differs from its image: {}{why}", .mismatches.iter().map(|m| m.to_string()).collect::<Vec<_>>().join("; "))]
    Verify {
        /// What differs.
        mismatches: Vec<verify::Mismatch>,
        /// Why it could not be read back, when it could not.
        why: String,
    },
}

/// Result alias for the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// Attaches a step and a pid to a kernel-seam error.
pub(crate) trait StepExt<T> {
    fn step(self, pid: i32, step: impl FnOnce() -> String) -> Result<T>;
}

impl<T> StepExt<T> for std::result::Result<T, lpm_sys::Error> {
    fn step(self, pid: i32, step: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| EngineError::Step { pid, step: step(), source })
    }
}

pub(crate) fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EngineError {
    let what = what.into();
    move |source| EngineError::Io { what, source }
}

/// Size of a page.
pub(crate) const PAGE: u64 = lpm_image::PAGE_SIZE;
