//! What the planners read: the hosts, the partitions on them, and the
//! rules a plan keeps (headroom, concurrency limits, the balance goal).
//!
//! Every type serializes with serde, so the console service can hand an
//! inventory and a plan over its HTTP API unchanged.

use std::collections::BTreeMap;
use std::ops::{Add, Sub};

use serde::{Deserialize, Serialize};

/// An amount of memory and CPU.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// Memory in MiB.
    pub memory_mib: u64,
    /// CPU in millicores (1000 is one core).
    pub cpu_milli: u64,
}

impl Resources {
    /// `memory_mib` MiB and `cpu_milli` millicores.
    pub const fn new(memory_mib: u64, cpu_milli: u64) -> Self {
        Resources { memory_mib, cpu_milli }
    }

    /// Whether both amounts are at most those of `limit`.
    pub fn within(self, limit: Resources) -> bool {
        self.memory_mib <= limit.memory_mib && self.cpu_milli <= limit.cpu_milli
    }

    /// The larger of each amount.
    pub fn max(self, o: Resources) -> Resources {
        Resources::new(self.memory_mib.max(o.memory_mib), self.cpu_milli.max(o.cpu_milli))
    }
}

impl Add for Resources {
    type Output = Resources;
    fn add(self, o: Resources) -> Resources {
        Resources::new(self.memory_mib + o.memory_mib, self.cpu_milli + o.cpu_milli)
    }
}

impl Sub for Resources {
    type Output = Resources;
    /// Saturating: a host whose other use exceeds its usable capacity has
    /// no room, not a negative one.
    fn sub(self, o: Resources) -> Resources {
        Resources::new(self.memory_mib.saturating_sub(o.memory_mib), self.cpu_milli.saturating_sub(o.cpu_milli))
    }
}

/// Whether a host's agent answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// The agent answers: the host can send and receive partitions.
    #[default]
    Up,
    /// The agent does not answer: nothing moves to or from this host.
    Down,
}

/// A host as the console knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Host {
    /// Unique name.
    pub name: String,
    /// Total memory and CPU.
    pub capacity: Resources,
    /// Memory and CPU in use by what is not a partition (the host itself,
    /// the agent, page cache it cannot give back).
    #[serde(default)]
    pub other_use: Resources,
    /// Up or down.
    #[serde(default)]
    pub health: Health,
    /// In maintenance: receives nothing.
    #[serde(default)]
    pub maintenance: bool,
    /// Zone (rack, room, site) for partitions constrained to one.
    #[serde(default)]
    pub zone: Option<String>,
    /// Free-form labels, shown, not interpreted by the planners.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Host {
    /// An up host out of maintenance with no other use, zone or labels.
    pub fn new(name: &str, capacity: Resources) -> Self {
        Host {
            name: name.into(),
            capacity,
            other_use: Resources::default(),
            health: Health::Up,
            maintenance: false,
            zone: None,
            labels: BTreeMap::new(),
        }
    }
}

/// The life-cycle state of a partition, as far as the planners care.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionState {
    /// Running: moves by live migration.
    #[default]
    Running,
    /// Stopped: moves by inactive migration (its spec and storage
    /// references), and keeps its reservation so it can start again.
    Stopped,
    /// In a migration already: a plan does not move it again.
    Migrating,
}

/// Whether a partition can move, as validation gave it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mobility", rename_all = "lowercase")]
pub enum Mobility {
    /// Validation passed.
    #[default]
    Movable,
    /// Validation refused the move, for this reason (its own words, e.g.
    /// "pid 412 fd 5: a character device of the host").
    Immovable {
        /// What validation said.
        reason: String,
    },
}

/// Where a partition may run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraints {
    /// Pinned to the host it is on: no plan moves it.
    #[serde(default)]
    pub pinned: bool,
    /// Anti-affinity group: no two partitions of one group on one host.
    #[serde(default)]
    pub anti_affinity: Option<String>,
    /// Runs only on hosts of this zone.
    #[serde(default)]
    pub zone: Option<String>,
}

/// A partition as the console knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Unique name.
    pub name: String,
    /// The host it is on.
    pub host: String,
    /// What it reserves.
    pub reserved: Resources,
    /// What it uses now (a partition may use more CPU than it reserves).
    #[serde(default)]
    pub used: Resources,
    /// Running, stopped or migrating.
    #[serde(default)]
    pub state: PartitionState,
    /// Whether validation lets it move.
    #[serde(default)]
    pub mobility: Mobility,
    /// Pinning, anti-affinity, zone.
    #[serde(default)]
    pub constraints: Constraints,
}

impl Partition {
    /// A running, movable, unconstrained partition using what it reserves.
    pub fn new(name: &str, host: &str, reserved: Resources) -> Self {
        Partition {
            name: name.into(),
            host: host.into(),
            reserved,
            used: reserved,
            state: PartitionState::Running,
            mobility: Mobility::Movable,
            constraints: Constraints::default(),
        }
    }

    /// What it takes on a host, for placement and for load: the larger of
    /// what it reserves and what it uses, per resource, so that a move
    /// never lands a partition where it would not get what it has now.
    pub fn footprint(&self) -> Resources {
        self.reserved.max(self.used)
    }
}

/// Memory and CPU each host keeps free, in percent of its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headroom {
    /// Percent of memory kept free.
    pub memory_pct: u32,
    /// Percent of CPU kept free.
    pub cpu_pct: u32,
}

impl Default for Headroom {
    fn default() -> Self {
        Headroom { memory_pct: 10, cpu_pct: 10 }
    }
}

/// Migrations at once: per host as lpmd's `max_outgoing`/`max_incoming`,
/// and console-wide.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Migrations one host runs as the source at once.
    pub max_outgoing: usize,
    /// Migrations one host runs as the target at once.
    pub max_incoming: usize,
    /// Migrations the console runs at once.
    pub max_total: usize,
}

impl Default for Limits {
    /// lpmd's defaults per host (4 and 4), 16 for the console.
    fn default() -> Self {
        Limits { max_outgoing: 4, max_incoming: 4, max_total: 16 }
    }
}

/// When `balance` stops (see the crate documentation for its objective).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BalanceGoal {
    /// Stop once the most and the least loaded hosts are within this many
    /// percentage points.
    pub spread_pct: f64,
    /// A move must lower the load of the host it leaves, and keep the
    /// host it joins, below that host's load before by more than this
    /// many percentage points.
    pub epsilon_pct: f64,
    /// At most this many moves (none: no bound but the partitions).
    #[serde(default)]
    pub max_moves: Option<usize>,
}

impl Default for BalanceGoal {
    fn default() -> Self {
        BalanceGoal { spread_pct: 10.0, epsilon_pct: 1.0, max_moves: None }
    }
}

/// The rules every plan keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rules {
    /// Memory and CPU kept free on each receiving host.
    #[serde(default)]
    pub headroom: Headroom,
    /// Concurrent migrations.
    #[serde(default)]
    pub limits: Limits,
    /// When balance stops.
    #[serde(default)]
    pub balance: BalanceGoal,
}

/// Hosts and partitions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    /// Every host.
    pub hosts: Vec<Host>,
    /// Every partition.
    pub partitions: Vec<Partition>,
}
