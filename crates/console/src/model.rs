//! The planners' working state: the inventory indexed by number, what each
//! host holds as moves are decided, and the rules every move keeps.
//!
//! Every plan splits the hosts it touches into donors, which only send,
//! and receivers, which only receive. A receiver's load then only grows
//! along the plan and a donor's only shrinks, so a move that fits the
//! receiver once all the plan's moves into it are counted fits at every
//! point of the plan, in any order: waves are then free to follow the
//! concurrency limits alone, and no plan ever overcommits a host.

use std::collections::{BTreeMap, HashMap};

use crate::inventory::{Health, Inventory, PartitionState, Resources, Rules};
use crate::plan::{Figures, Left, Move, MoveKind, Plan, Policy, Reason, Wave, Why};

/// Why a plan cannot be made at all.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    /// Two hosts share a name.
    #[error("inventory: two hosts are named {name}")]
    DuplicateHost {
        /// The name.
        name: String,
    },
    /// Two partitions share a name.
    #[error("inventory: two partitions are named {name}")]
    DuplicatePartition {
        /// The name.
        name: String,
    },
    /// A partition is on a host the inventory does not list.
    #[error("inventory: partition {partition} is on unknown host {host}")]
    UnknownHost {
        /// The partition.
        partition: String,
        /// Its host.
        host: String,
    },
    /// A host has no memory or no CPU.
    #[error("inventory: host {host} has no memory or no cpu capacity")]
    NoCapacity {
        /// The host.
        host: String,
    },
    /// The host to evacuate is not in the inventory.
    #[error("evacuate: no host named {host}")]
    NoSuchHost {
        /// The name asked for.
        host: String,
    },
    /// A headroom above 100 %.
    #[error("rules: headroom {pct}% is above 100%")]
    Headroom {
        /// The percentage given.
        pct: u32,
    },
    /// A concurrency limit of zero would never let a move start.
    #[error("rules: limit {which} is zero")]
    ZeroLimit {
        /// Which limit.
        which: &'static str,
    },
    /// A balance goal that is negative or not a number.
    #[error("rules: balance {which} must be a number at least 0")]
    Goal {
        /// Which figure.
        which: &'static str,
    },
}

/// A host's part in the plan so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// Neither sent nor received yet.
    Free,
    /// Sent at least one partition: receives nothing in this plan.
    Donor,
    /// Received at least one partition: sends nothing in this plan.
    Receiver,
}

/// One decided move, with what undoing it restores.
struct Decided {
    p: usize,
    from: usize,
    to: usize,
    why: Why,
    roles: (Role, Role),
}

/// The inventory indexed, and the plan being made.
pub(crate) struct Model<'a> {
    pub inv: &'a Inventory,
    rules: &'a Rules,
    /// Per host: the room for partitions (capacity less headroom less
    /// other use).
    pub limit: Vec<Resources>,
    /// Per host: the footprints of the partitions on it now.
    pub used: Vec<Resources>,
    /// Per host: receives nothing (down or in maintenance).
    pub closed: Vec<bool>,
    pub role: Vec<Role>,
    /// Per partition: its footprint.
    pub fp: Vec<Resources>,
    /// Per partition: its host now.
    pub at: Vec<usize>,
    /// Per partition: its host before the plan.
    home: Vec<usize>,
    /// Per partition: its anti-affinity group, numbered.
    group: Vec<Option<u32>>,
    /// Partitions of each group on each host.
    members: HashMap<(u32, usize), u32>,
    /// Per host: the partitions on it before the plan.
    pub on: Vec<Vec<usize>>,
    decided: Vec<Decided>,
    /// Host index by name.
    pub by_name: HashMap<&'a str, usize>,
    /// Per partition: its size as a fraction of the average host, used to
    /// take the largest first.
    pub size: Vec<u64>,
}

fn check_rules(r: &Rules) -> Result<(), PlanError> {
    for pct in [r.headroom.memory_pct, r.headroom.cpu_pct] {
        if pct > 100 {
            return Err(PlanError::Headroom { pct });
        }
    }
    for (v, which) in [(r.limits.max_outgoing, "max_outgoing"), (r.limits.max_incoming, "max_incoming"), (r.limits.max_total, "max_total")]
    {
        if v == 0 {
            return Err(PlanError::ZeroLimit { which });
        }
    }
    for (v, which) in [(r.balance.spread_pct, "spread_pct"), (r.balance.epsilon_pct, "epsilon_pct")] {
        if v.is_nan() || v < 0.0 {
            return Err(PlanError::Goal { which });
        }
    }
    Ok(())
}

fn pct_of(x: u64, of: u64) -> f64 {
    x as f64 * 100.0 / of as f64
}

impl<'a> Model<'a> {
    /// Index `inv`, refusing an inventory or rules that make no sense.
    pub fn new(inv: &'a Inventory, rules: &'a Rules) -> Result<Self, PlanError> {
        check_rules(rules)?;
        let mut by_name = HashMap::with_capacity(inv.hosts.len());
        let mut limit = Vec::with_capacity(inv.hosts.len());
        let mut closed = Vec::with_capacity(inv.hosts.len());
        let (mut total_mem, mut total_cpu) = (0u64, 0u64);
        for (i, h) in inv.hosts.iter().enumerate() {
            if by_name.insert(h.name.as_str(), i).is_some() {
                return Err(PlanError::DuplicateHost { name: h.name.clone() });
            }
            if h.capacity.memory_mib == 0 || h.capacity.cpu_milli == 0 {
                return Err(PlanError::NoCapacity { host: h.name.clone() });
            }
            let keep = |cap: u64, pct: u32| cap - (cap as u128 * pct as u128).div_ceil(100) as u64;
            let usable =
                Resources::new(keep(h.capacity.memory_mib, rules.headroom.memory_pct), keep(h.capacity.cpu_milli, rules.headroom.cpu_pct));
            limit.push(usable - h.other_use);
            closed.push(h.health == Health::Down || h.maintenance);
            total_mem += h.capacity.memory_mib;
            total_cpu += h.capacity.cpu_milli;
        }
        let n = inv.hosts.len().max(1) as u64;
        let (avg_mem, avg_cpu) = ((total_mem / n).max(1), (total_cpu / n).max(1));
        let mut names = std::collections::HashSet::with_capacity(inv.partitions.len());
        let mut groups: HashMap<&str, u32> = HashMap::new();
        let mut m = Model {
            inv,
            rules,
            used: vec![Resources::default(); inv.hosts.len()],
            role: vec![Role::Free; inv.hosts.len()],
            on: vec![Vec::new(); inv.hosts.len()],
            limit,
            closed,
            fp: Vec::with_capacity(inv.partitions.len()),
            at: Vec::with_capacity(inv.partitions.len()),
            home: Vec::with_capacity(inv.partitions.len()),
            group: Vec::with_capacity(inv.partitions.len()),
            members: HashMap::new(),
            decided: Vec::new(),
            by_name,
            size: Vec::with_capacity(inv.partitions.len()),
        };
        for (i, p) in inv.partitions.iter().enumerate() {
            if !names.insert(p.name.as_str()) {
                return Err(PlanError::DuplicatePartition { name: p.name.clone() });
            }
            let Some(&h) = m.by_name.get(p.host.as_str()) else {
                return Err(PlanError::UnknownHost { partition: p.name.clone(), host: p.host.clone() });
            };
            let fp = p.footprint();
            m.used[h] = m.used[h] + fp;
            m.on[h].push(i);
            let g = p.constraints.anti_affinity.as_deref().map(|g| {
                let next = groups.len() as u32;
                *groups.entry(g).or_insert(next)
            });
            if let Some(g) = g {
                *m.members.entry((g, h)).or_default() += 1;
            }
            m.fp.push(fp);
            m.at.push(h);
            m.home.push(h);
            m.group.push(g);
            m.size.push((fp.memory_mib * 1_000_000 / avg_mem).max(fp.cpu_milli * 1_000_000 / avg_cpu));
        }
        Ok(m)
    }

    /// Why partition `p` cannot leave its host, if it cannot.
    pub fn immobile(&self, p: usize) -> Option<Reason> {
        let part = &self.inv.partitions[p];
        if let crate::inventory::Mobility::Immovable { reason } = &part.mobility {
            return Some(Reason::Immovable { reason: reason.clone() });
        }
        if part.constraints.pinned {
            return Some(Reason::Pinned);
        }
        if part.state == PartitionState::Migrating {
            return Some(Reason::Migrating);
        }
        if self.inv.hosts[self.at[p]].health == Health::Down {
            return Some(Reason::HostDown);
        }
        None
    }

    /// Whether host `h` may receive at all in this plan.
    pub fn receives(&self, h: usize) -> bool {
        !self.closed[h] && self.role[h] != Role::Donor
    }

    /// Whether partition `p` fits on host `h` now: `h` receives, has room
    /// within headroom, is in `p`'s zone and holds no partition of `p`'s
    /// anti-affinity group.
    pub fn fits(&self, p: usize, h: usize) -> bool {
        self.receives(h) && h != self.at[p] && self.room(p, h) && self.zone_ok(p, h) && !self.clash(p, h)
    }

    fn room(&self, p: usize, h: usize) -> bool {
        (self.used[h] + self.fp[p]).within(self.limit[h])
    }

    fn zone_ok(&self, p: usize, h: usize) -> bool {
        match &self.inv.partitions[p].constraints.zone {
            Some(z) => self.inv.hosts[h].zone.as_deref() == Some(z.as_str()),
            None => true,
        }
    }

    fn clash(&self, p: usize, h: usize) -> bool {
        self.group[p].is_some_and(|g| self.members.get(&(g, h)).is_some_and(|&n| n > 0))
    }

    /// Why no host takes `p`: each receiving host counted under the first
    /// rule it fails.
    pub fn no_target(&self, p: usize) -> Reason {
        let (mut candidates, mut no_room, mut anti_affinity, mut zone) = (0, 0, 0, 0);
        for h in 0..self.inv.hosts.len() {
            if !self.receives(h) || h == self.at[p] {
                continue;
            }
            candidates += 1;
            if !self.zone_ok(p, h) {
                zone += 1;
            } else if self.clash(p, h) {
                anti_affinity += 1;
            } else if !self.room(p, h) {
                no_room += 1;
            }
        }
        Reason::NoTarget { needs: self.fp[p], candidates, no_room, anti_affinity, zone }
    }

    /// Load of host `h` in millionths: the larger of its memory and CPU
    /// use over capacity, other use included.
    pub fn load(&self, h: usize) -> u64 {
        self.load_with(h, self.used[h])
    }

    /// Load of host `h` if its partitions took `used`.
    pub fn load_with(&self, h: usize, used: Resources) -> u64 {
        let host = &self.inv.hosts[h];
        // f64 keeps this cheap (the planners evaluate it millions of
        // times) and exact enough: millionths of a percent do not decide
        // a plan.
        let m = (used.memory_mib + host.other_use.memory_mib) as f64 / host.capacity.memory_mib as f64;
        let c = (used.cpu_milli + host.other_use.cpu_milli) as f64 / host.capacity.cpu_milli as f64;
        (m.max(c) * 1e6) as u64
    }

    /// Decide that `p` moves to `to` (which `fits`).
    pub fn shift(&mut self, p: usize, to: usize, why: Why) {
        debug_assert!(self.fits(p, to));
        let from = self.at[p];
        self.decided.push(Decided { p, from, to, why, roles: (self.role[from], self.role[to]) });
        self.used[from] = self.used[from] - self.fp[p];
        self.used[to] = self.used[to] + self.fp[p];
        if let Some(g) = self.group[p] {
            *self.members.entry((g, from)).or_default() -= 1;
            *self.members.entry((g, to)).or_default() += 1;
        }
        self.at[p] = to;
        self.role[from] = Role::Donor;
        self.role[to] = Role::Receiver;
    }

    /// The number of moves decided, to `undo_to` later.
    pub fn mark(&self) -> usize {
        self.decided.len()
    }

    /// Take back every move decided since `mark`.
    pub fn undo_to(&mut self, mark: usize) {
        while self.decided.len() > mark {
            let Some(d) = self.decided.pop() else { break };
            self.used[d.to] = self.used[d.to] - self.fp[d.p];
            self.used[d.from] = self.used[d.from] + self.fp[d.p];
            if let Some(g) = self.group[d.p] {
                *self.members.entry((g, d.to)).or_default() -= 1;
                *self.members.entry((g, d.from)).or_default() += 1;
            }
            self.at[d.p] = d.from;
            self.role[d.from] = d.roles.0;
            self.role[d.to] = d.roles.1;
        }
    }

    /// Whether `p` has a move decided.
    pub fn moved(&self, p: usize) -> bool {
        self.at[p] != self.home[p]
    }

    /// Load figures now, over the hosts up and out of maintenance (and
    /// not in `also_closed`).
    pub fn figures(&self, also_closed: Option<usize>) -> Figures {
        let mut f = Figures { min_load: f64::INFINITY, min_memory: f64::INFINITY, min_cpu: f64::INFINITY, ..Default::default() };
        let mut count = vec![0usize; self.inv.hosts.len()];
        for &h in &self.at {
            count[h] += 1;
        }
        for (h, host) in self.inv.hosts.iter().enumerate() {
            if self.closed[h] || Some(h) == also_closed {
                continue;
            }
            f.hosts += 1;
            if count[h] > 0 {
                f.hosts_used += 1;
            }
            let mem = pct_of(self.used[h].memory_mib + host.other_use.memory_mib, host.capacity.memory_mib);
            let cpu = pct_of(self.used[h].cpu_milli + host.other_use.cpu_milli, host.capacity.cpu_milli);
            let load = mem.max(cpu);
            f.max_load = f.max_load.max(load);
            f.min_load = f.min_load.min(load);
            f.max_memory = f.max_memory.max(mem);
            f.min_memory = f.min_memory.min(mem);
            f.max_cpu = f.max_cpu.max(cpu);
            f.min_cpu = f.min_cpu.min(cpu);
        }
        if f.hosts == 0 {
            f.min_load = 0.0;
            f.min_memory = 0.0;
            f.min_cpu = 0.0;
        }
        f
    }

    /// The plan: the decided moves in waves under the concurrency limits,
    /// the placement after, and the figures.
    pub fn finish(
        self,
        policy: Policy,
        before: Figures,
        left: Vec<(usize, Reason)>,
        notes: Vec<String>,
        maintenance_after: Option<usize>,
    ) -> Plan {
        let after = self.figures(maintenance_after);
        let inv = self.inv;
        let name = |h: usize| inv.hosts[h].name.clone();
        let moves: Vec<Move> = self
            .decided
            .iter()
            .map(|d| {
                let p = &inv.partitions[d.p];
                Move {
                    partition: p.name.clone(),
                    from: name(d.from),
                    to: name(d.to),
                    kind: if p.state == PartitionState::Stopped { MoveKind::Inactive } else { MoveKind::Live },
                    footprint: self.fp[d.p],
                    why: d.why.clone(),
                }
            })
            .collect();
        let pairs: Vec<(usize, usize)> = self.decided.iter().map(|d| (d.from, d.to)).collect();
        let waves = waves(moves, &pairs, inv.hosts.len(), &self.rules.limits);
        let placement: BTreeMap<String, String> = inv.partitions.iter().zip(&self.at).map(|(p, &h)| (p.name.clone(), name(h))).collect();
        let mut count = vec![0usize; inv.hosts.len()];
        for &h in &self.at {
            count[h] += 1;
        }
        let maintenance = inv
            .hosts
            .iter()
            .enumerate()
            .filter(|(i, h)| h.maintenance || Some(*i) == maintenance_after)
            .map(|(_, h)| h.name.clone())
            .collect();
        let power_off =
            inv.hosts.iter().enumerate().filter(|(i, h)| h.health == Health::Up && count[*i] == 0).map(|(_, h)| h.name.clone()).collect();
        let left = left
            .into_iter()
            .map(|(p, reason)| Left { partition: inv.partitions[p].name.clone(), host: name(self.at[p]), reason })
            .collect();
        Plan { policy, waves, left, placement, maintenance, power_off, before, after, notes }
    }
}

/// Cut `moves` (with their host pairs) into waves: each wave takes, in
/// order, every waiting move whose source and target are under their
/// per-host limits, up to the console-wide limit. Capacity needs no check
/// here (see the module documentation), so every wave takes at least the
/// first waiting move and this ends.
fn waves(moves: Vec<Move>, pairs: &[(usize, usize)], hosts: usize, limits: &crate::inventory::Limits) -> Vec<Wave> {
    let mut waiting: Vec<(Move, (usize, usize))> = moves.into_iter().zip(pairs.iter().copied()).collect();
    let mut out = vec![0usize; hosts];
    let mut inc = vec![0usize; hosts];
    let mut waves = Vec::new();
    while !waiting.is_empty() {
        let mut wave = Vec::new();
        let mut later = Vec::with_capacity(waiting.len());
        let mut touched = Vec::new();
        for (m, (from, to)) in waiting {
            if wave.len() < limits.max_total && out[from] < limits.max_outgoing && inc[to] < limits.max_incoming {
                out[from] += 1;
                inc[to] += 1;
                touched.push((from, to));
                wave.push(m);
            } else {
                later.push((m, (from, to)));
            }
        }
        for (from, to) in touched {
            out[from] = 0;
            inc[to] = 0;
        }
        waves.push(Wave { moves: wave });
        waiting = later;
    }
    waves
}
