//! What a planner returns, and its `--dry-run` text.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use crate::inventory::Resources;

/// Which policy made a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "lowercase")]
pub enum Policy {
    /// Every partition off `host`, which is then in maintenance.
    Evacuate {
        /// The host emptied.
        host: String,
    },
    /// Even out memory and CPU load.
    Balance,
    /// Pack partitions onto the fewest hosts.
    Consolidate,
}

/// How a partition moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MoveKind {
    /// Live migration of a running partition.
    Live,
    /// Inactive migration of a stopped one.
    Inactive,
}

/// Why a move is in the plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "lowercase")]
pub enum Why {
    /// Its host is being evacuated.
    Evacuate {
        /// The host.
        host: String,
    },
    /// It evens out load: the loads (percent) of the two hosts before and
    /// after the move.
    Balance {
        /// Load of the source before.
        from_before: f64,
        /// Load of the source after.
        from_after: f64,
        /// Load of the target before.
        to_before: f64,
        /// Load of the target after.
        to_after: f64,
    },
    /// Its host is being emptied so it can be powered off.
    Consolidate {
        /// The host.
        host: String,
    },
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Why::Evacuate { host } => write!(f, "evacuate {host}"),
            Why::Balance { from_before, from_after, to_before, to_after } => {
                write!(f, "balance: source load {from_before:.1}% -> {from_after:.1}%, target {to_before:.1}% -> {to_after:.1}%")
            }
            Why::Consolidate { host } => write!(f, "empty {host} to power it off"),
        }
    }
}

/// One migration of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Move {
    /// The partition.
    pub partition: String,
    /// Its host before.
    pub from: String,
    /// Its host after.
    pub to: String,
    /// Live or inactive.
    pub kind: MoveKind,
    /// What it needs on the target.
    pub footprint: Resources,
    /// Why.
    pub why: Why,
}

/// Moves that run at once: a wave starts when the one before has ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wave {
    /// The moves, in the order they start.
    pub moves: Vec<Move>,
}

/// Why a partition the plan concerns stays where it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reason {
    /// Validation refused to move it.
    Immovable {
        /// Validation's words.
        reason: String,
    },
    /// Pinned to its host.
    Pinned,
    /// Already in a migration.
    Migrating,
    /// Its host is down: nothing moves off it.
    HostDown,
    /// No host can take it; how many candidates failed on each rule.
    NoTarget {
        /// What it needs.
        needs: Resources,
        /// Hosts up, out of maintenance, that could receive at all.
        candidates: usize,
        /// Of them, those without room within headroom.
        no_room: usize,
        /// Those holding a partition of its anti-affinity group.
        anti_affinity: usize,
        /// Those outside its zone.
        zone: usize,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Immovable { reason } => write!(f, "validation refuses to move it: {reason}"),
            Reason::Pinned => write!(f, "pinned to its host"),
            Reason::Migrating => write!(f, "already migrating"),
            Reason::HostDown => write!(f, "its host is down"),
            Reason::NoTarget { needs, candidates, no_room, anti_affinity, zone } => {
                write!(
                    f,
                    "no host can take it ({} MiB, {} mCPU): of {candidates} hosts that receive, ",
                    needs.memory_mib, needs.cpu_milli
                )?;
                write!(f, "{no_room} lack room within headroom, {anti_affinity} hold its anti-affinity group, {zone} are outside its zone")
            }
        }
    }
}

/// A partition the plan concerns that stays where it is, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Left {
    /// The partition.
    pub partition: String,
    /// Its host.
    pub host: String,
    /// Why it stays.
    pub reason: Reason,
}

/// Load figures over the hosts that are up and out of maintenance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Hosts up and out of maintenance.
    pub hosts: usize,
    /// Of them, those holding at least one partition.
    pub hosts_used: usize,
    /// Highest load (the larger of memory and CPU use, percent of
    /// capacity, other use included).
    pub max_load: f64,
    /// Lowest load.
    pub min_load: f64,
    /// Highest memory use, percent.
    pub max_memory: f64,
    /// Lowest memory use, percent.
    pub min_memory: f64,
    /// Highest CPU use, percent.
    pub max_cpu: f64,
    /// Lowest CPU use, percent.
    pub min_cpu: f64,
}

/// What a planner returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The policy.
    pub policy: Policy,
    /// The moves, wave after wave.
    pub waves: Vec<Wave>,
    /// Partitions the plan concerns that stay, each with its reason.
    pub left: Vec<Left>,
    /// Every partition's host after the plan.
    pub placement: BTreeMap<String, String>,
    /// Hosts in maintenance after the plan.
    pub maintenance: Vec<String>,
    /// Hosts up with no partition after the plan: they can be powered off.
    pub power_off: Vec<String>,
    /// Load before.
    pub before: Figures,
    /// Load after.
    pub after: Figures,
    /// Why the planner stopped where it did, when that is worth saying.
    pub notes: Vec<String>,
}

impl Plan {
    /// Every move, in order.
    pub fn moves(&self) -> impl Iterator<Item = &Move> {
        self.waves.iter().flat_map(|w| w.moves.iter())
    }

    /// The number of moves.
    pub fn move_count(&self) -> usize {
        self.waves.iter().map(|w| w.moves.len()).sum()
    }

    /// The `--dry-run` text: per wave which partition goes where and why,
    /// then what stays and why, then the figures.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let what = match &self.policy {
            Policy::Evacuate { host } => format!("evacuate {host}"),
            Policy::Balance => "balance".into(),
            Policy::Consolidate => "consolidate".into(),
        };
        let _ = writeln!(s, "plan: {what}: {} moves in {} waves, {} partitions stay", self.move_count(), self.waves.len(), self.left.len());
        for (i, w) in self.waves.iter().enumerate() {
            let _ = writeln!(s, "wave {}:", i + 1);
            for m in &w.moves {
                let kind = match m.kind {
                    MoveKind::Live => "live",
                    MoveKind::Inactive => "inactive",
                };
                let _ = writeln!(
                    s,
                    "  {} {} -> {} ({kind}, {} MiB, {} mCPU): {}",
                    m.partition, m.from, m.to, m.footprint.memory_mib, m.footprint.cpu_milli, m.why
                );
            }
        }
        if !self.left.is_empty() {
            let _ = writeln!(s, "staying:");
            for l in &self.left {
                let _ = writeln!(s, "  {} on {}: {}", l.partition, l.host, l.reason);
            }
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        if !self.maintenance.is_empty() {
            let _ = writeln!(s, "in maintenance after: {}", self.maintenance.join(", "));
        }
        if !self.power_off.is_empty() {
            let _ = writeln!(s, "can be powered off after: {}", self.power_off.join(", "));
        }
        let fig = |f: &Figures| {
            format!(
                "{} hosts, {} in use, load {:.1}%..{:.1}%, memory {:.1}%..{:.1}%, cpu {:.1}%..{:.1}%",
                f.hosts, f.hosts_used, f.min_load, f.max_load, f.min_memory, f.max_memory, f.min_cpu, f.max_cpu
            )
        };
        let _ = writeln!(s, "before: {}", fig(&self.before));
        let _ = writeln!(s, "after:  {}", fig(&self.after));
        s
    }
}
