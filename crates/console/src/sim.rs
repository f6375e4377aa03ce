//! A simulated inventory for the benchmark (`lpm bench plan`, `cargo
//! bench -p lpm-console`): deterministic from a seed, skewed so that
//! balance and consolidate have work to do, with the awkward cases of a
//! real site (hosts down or in maintenance, partitions pinned, immovable,
//! stopped, migrating, in anti-affinity groups or bound to a zone).

use std::time::{Duration, Instant};

use crate::inventory::{Constraints, Health, Host, Inventory, Mobility, Partition, PartitionState, Resources, Rules};
use crate::plan::{Figures, Plan};

/// SplitMix64: small, seedable, good enough to make inventories.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// An inventory of `hosts` hosts (256, 384 or 512 GiB, 4 GiB per core) and
/// `partitions` partitions of 2 to 24 GiB, about 60 % loaded overall and
/// skewed towards the first hosts. 1 % of hosts are down, 1 % in
/// maintenance; of partitions 2 % are immovable, 1 % pinned, 5 % stopped,
/// 0.5 % migrating, 10 % in anti-affinity groups of three and 5 % bound to
/// their host's zone (4 zones).
pub fn inventory(hosts: usize, partitions: usize, seed: u64) -> Inventory {
    let mut r = Rng(seed);
    let mut inv = Inventory::default();
    for i in 0..hosts {
        let gib = [256u64, 384, 512][r.below(3) as usize];
        let mut h = Host::new(&format!("host-{i:04}"), Resources::new(gib << 10, gib * 250));
        h.other_use = Resources::new((4 + r.below(5)) << 10, 1000 + r.below(1000));
        h.zone = Some(format!("z{}", i % 4));
        if r.chance(10) {
            h.health = Health::Down;
        } else if r.chance(10) {
            h.maintenance = true;
        }
        inv.hosts.push(h);
    }
    let mut used = vec![Resources::default(); hosts];
    for i in 0..partitions {
        let gib = [2u64, 4, 8, 12, 16, 24][r.below(6) as usize];
        let cpu = gib * 250 * (50 + r.below(100)) / 100;
        let reserved = Resources::new(gib << 10, cpu);
        // The smaller of two random hosts: the low-numbered ones fill up
        // first, as on a site that grew without a balancer.
        let mut host = None;
        for _ in 0..20 {
            let h = (r.below(hosts as u64) as usize).min(r.below(hosts as u64) as usize);
            if (used[h] + reserved + inv.hosts[h].other_use)
                .within(Resources::new(inv.hosts[h].capacity.memory_mib * 95 / 100, inv.hosts[h].capacity.cpu_milli * 95 / 100))
            {
                host = Some(h);
                break;
            }
        }
        let h =
            host.unwrap_or_else(|| (0..hosts).min_by_key(|&h| used[h].memory_mib * 1000 / inv.hosts[h].capacity.memory_mib).unwrap_or(0));
        used[h] = used[h] + reserved;
        let mut p = Partition::new(&format!("part-{i:05}"), &inv.hosts[h].name, reserved);
        p.used = Resources::new(reserved.memory_mib * (50 + r.below(50)) / 100, reserved.cpu_milli * r.below(120) / 100);
        if r.chance(20) {
            p.mobility = Mobility::Immovable { reason: "pid 1 fd 3: a character device of the host (simulated)".into() };
        }
        if r.chance(50) {
            p.state = PartitionState::Stopped;
        } else if r.chance(5) {
            p.state = PartitionState::Migrating;
        }
        p.constraints = Constraints {
            pinned: r.chance(10),
            anti_affinity: r.chance(100).then(|| format!("group-{}", r.below(partitions as u64 / 30 + 1))),
            zone: r.chance(50).then(|| inv.hosts[h].zone.clone()).flatten(),
        };
        inv.partitions.push(p);
    }
    inv
}

/// One planner's run in the benchmark.
pub struct BenchRow {
    /// The planner.
    pub name: String,
    /// Time to plan.
    pub elapsed: Duration,
    /// The plan.
    pub plan: Plan,
}

/// Run each planner once on `inv`: evacuate the most loaded host,
/// balance, consolidate.
pub fn bench(inv: &Inventory, rules: &Rules) -> Result<Vec<BenchRow>, crate::PlanError> {
    let busiest = inv
        .hosts
        .iter()
        .filter(|h| h.health == Health::Up && !h.maintenance)
        .max_by_key(|h| inv.partitions.iter().filter(|p| p.host == h.name).count())
        .map(|h| h.name.clone())
        .unwrap_or_default();
    let mut rows = Vec::new();
    let t = Instant::now();
    let plan = crate::evacuate(inv, rules, &busiest)?;
    rows.push(BenchRow { name: format!("evacuate {busiest}"), elapsed: t.elapsed(), plan });
    let t = Instant::now();
    let plan = crate::balance(inv, rules)?;
    rows.push(BenchRow { name: "balance".into(), elapsed: t.elapsed(), plan });
    let t = Instant::now();
    let plan = crate::consolidate(inv, rules)?;
    rows.push(BenchRow { name: "consolidate".into(), elapsed: t.elapsed(), plan });
    Ok(rows)
}

/// The benchmark's table: per planner the time, the moves and waves, what
/// stays, the hosts in use and that can be powered off, and the load
/// spread before and after.
pub fn report(rows: &[BenchRow]) -> String {
    let mut s = format!(
        "{:<20} {:>9} {:>6} {:>6} {:>6} {:>11} {:>9} {:>17} {:>17}\n",
        "planner", "time ms", "moves", "waves", "stay", "hosts used", "power off", "load before", "load after"
    );
    let range = |f: &Figures| format!("{:.1}..{:.1}%", f.min_load, f.max_load);
    for r in rows {
        let p = &r.plan;
        s += &format!(
            "{:<20} {:>9.1} {:>6} {:>6} {:>6} {:>11} {:>9} {:>17} {:>17}\n",
            r.name,
            r.elapsed.as_secs_f64() * 1000.0,
            p.move_count(),
            p.waves.len(),
            p.left.len(),
            format!("{} -> {}", p.before.hosts_used, p.after.hosts_used),
            p.power_off.len(),
            range(&p.before),
            range(&p.after)
        );
    }
    s
}
