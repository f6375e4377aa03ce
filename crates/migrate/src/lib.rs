//! Live migration: pre-copy with dirty tracking, the convergence policy,
//! the target's page store and the migration report.
//!
//! - [`precopy`]: the source copies the memory of running processes round
//!   after round into a [`precopy::PageSink`] while their writes are
//!   tracked, and finally tells the checkpoint which pages the target
//!   already holds.
//! - [`policy`]: after each round, one pure function decides whether to go
//!   on, throttle, switch over or give up.
//! - [`store`]: the target keeps arriving pages in sparse files the
//!   engine's restore reads.
//! - [`report`]: what a migration did, as JSON and as text.
//! - [`handover`]: the protocol's two state machines, as pure transition
//!   functions the agents run; [`model`] checks them exhaustively against
//!   lost, duplicated and delayed messages and crashes; [`journal`] keeps
//!   each host's durable record of them.

#![forbid(unsafe_code)]

pub mod handover;
pub mod journal;
pub mod model;
pub mod policy;
pub mod precopy;
pub mod report;
pub mod store;
