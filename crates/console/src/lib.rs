//! The console's mobility policies as pure functions over an inventory.
//!
//! Each planner reads an [`Inventory`] (hosts, partitions) and [`Rules`]
//! (headroom, concurrency limits, the balance goal) and returns a
//! [`Plan`]: moves in waves, the partitions it concerns that stay (each
//! with its [`Reason`]), the placement after, and load figures before and
//! after. Nothing is carried out here: the console service runs the plan.
//!
//! Rules every plan keeps:
//! - a host down or in maintenance receives nothing; nothing leaves a host
//!   that is down;
//! - a partition pinned, migrating, or refused by validation stays, named;
//! - a target keeps its headroom with the move counted: the partition's
//!   footprint (the larger of what it reserves and uses) plus what the
//!   host holds fits within capacity less headroom less other use;
//! - no two partitions of one anti-affinity group on one host; a partition
//!   bound to a zone goes only to hosts of that zone;
//! - a partition moves at most once in a plan, and a host either only
//!   sends or only receives: loads then change in one direction, so the
//!   headroom holds at every point of the plan, whatever the order;
//! - waves: a wave starts when the one before has ended; per wave at most
//!   `max_outgoing` moves from one host, `max_incoming` into one host and
//!   `max_total` in all.
//!
//! The objectives are in [`evacuate()`], [`balance()`] and
//! [`consolidate()`]; docs/console.md has them with the benchmark's
//! figures.
//!
//! [`service`] is the console as a service (`lpm console serve`): the
//! HTTP API, the store, the hosts polled, migrations through the hosts;
//! [`client`] is the CLI's client of it.

#![forbid(unsafe_code)]

pub mod client;
pub mod service;

mod balance;
mod consolidate;
mod evacuate;
mod inventory;
mod model;
mod plan;
pub mod sim;

pub use balance::balance;
pub use consolidate::consolidate;
pub use evacuate::evacuate;
pub use inventory::{
    BalanceGoal, Constraints, Headroom, Health, Host, Inventory, Limits, Mobility, Partition, PartitionState, Resources, Rules,
};
pub use model::PlanError;
pub use plan::{Figures, Left, Move, MoveKind, Plan, Policy, Reason, Wave, Why};
