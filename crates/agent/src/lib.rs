//! lpmd, the host agent of lpm, as a library: the control API, its client,
//! the daemon and the two ends of a live migration.

#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod daemon;
pub mod fault;
pub mod fill;
pub mod gate;
pub mod metrics;
pub mod migration;
pub mod orphans;
pub mod remote;
pub mod state;
pub mod validate;
