//! The invariants every plan keeps, checked from the inventory and the
//! plan alone (independently of the planners' own bookkeeping). Shared
//! by the table tests and the property tests.

use std::collections::{BTreeMap, HashMap, HashSet};

use lpm_console::{Health, Inventory, Mobility, PartitionState, Plan, Policy, Resources, Rules};

/// Room for partitions on a host: capacity less headroom less other use.
pub fn usable(inv: &Inventory, rules: &Rules, h: &str) -> Resources {
    let host = inv.hosts.iter().find(|x| x.name == h).expect("host in inventory");
    let keep = |cap: u64, pct: u32| cap - (cap * pct as u64).div_ceil(100);
    Resources::new(
        keep(host.capacity.memory_mib, rules.headroom.memory_pct).saturating_sub(host.other_use.memory_mib),
        keep(host.capacity.cpu_milli, rules.headroom.cpu_pct).saturating_sub(host.other_use.cpu_milli),
    )
}

/// Panics, saying which, if `plan` breaks a rule for `inv`.
pub fn check(inv: &Inventory, rules: &Rules, plan: &Plan) {
    let hosts: HashMap<&str, &lpm_console::Host> = inv.hosts.iter().map(|h| (h.name.as_str(), h)).collect();
    let parts: HashMap<&str, &lpm_console::Partition> = inv.partitions.iter().map(|p| (p.name.as_str(), p)).collect();
    let evacuated = match &plan.policy {
        Policy::Evacuate { host } => Some(host.as_str()),
        _ => None,
    };
    let mut at: HashMap<&str, &str> = inv.partitions.iter().map(|p| (p.name.as_str(), p.host.as_str())).collect();
    let mut used: HashMap<&str, Resources> = HashMap::new();
    for p in &inv.partitions {
        let u = used.entry(p.host.as_str()).or_default();
        *u = *u + p.footprint();
    }
    let mut seen = HashSet::new();
    let (mut sends, mut receives) = (HashSet::new(), HashSet::new());
    for (w, wave) in plan.waves.iter().enumerate() {
        assert!(!wave.moves.is_empty(), "wave {w} is empty");
        assert!(wave.moves.len() <= rules.limits.max_total, "wave {w}: {} moves over max_total", wave.moves.len());
        let mut out: HashMap<&str, usize> = HashMap::new();
        let mut inc: HashMap<&str, usize> = HashMap::new();
        // The wave starts: every target holds what it had and the
        // incoming partitions; sources still hold theirs.
        for m in &wave.moves {
            let p = parts[m.partition.as_str()];
            assert!(seen.insert(m.partition.as_str()), "{} moves twice", m.partition);
            assert_eq!(at[m.partition.as_str()], m.from, "{} is not on {}", m.partition, m.from);
            assert_eq!(m.footprint, p.footprint());
            assert_ne!(m.from, m.to);
            let from = hosts[m.from.as_str()];
            let to = hosts[m.to.as_str()];
            assert_eq!(from.health, Health::Up, "{} leaves down host {}", m.partition, m.from);
            assert_eq!(to.health, Health::Up, "{} goes to down host {}", m.partition, m.to);
            assert!(!to.maintenance && Some(m.to.as_str()) != evacuated, "{} goes to {} in maintenance", m.partition, m.to);
            assert!(matches!(p.mobility, Mobility::Movable), "immovable {} moves", m.partition);
            assert!(!p.constraints.pinned, "pinned {} moves", m.partition);
            assert_ne!(p.state, PartitionState::Migrating, "migrating {} moves", m.partition);
            if let Some(z) = &p.constraints.zone {
                assert_eq!(to.zone.as_ref(), Some(z), "{} leaves its zone", m.partition);
            }
            if let Some(g) = &p.constraints.anti_affinity {
                // On the target: what is there now and what comes in this
                // wave (the moved partitions are on both hosts meanwhile).
                let clash = inv
                    .partitions
                    .iter()
                    .any(|q| q.name != p.name && q.constraints.anti_affinity.as_ref() == Some(g) && at[q.name.as_str()] == m.to);
                assert!(!clash, "{} joins its anti-affinity group on {}", m.partition, m.to);
            }
            *out.entry(m.from.as_str()).or_default() += 1;
            *inc.entry(m.to.as_str()).or_default() += 1;
            sends.insert(m.from.as_str());
            receives.insert(m.to.as_str());
            let u = used.entry(m.to.as_str()).or_default();
            *u = *u + m.footprint;
            at.insert(m.partition.as_str(), m.to.as_str());
        }
        for m in &wave.moves {
            let u = used[m.to.as_str()];
            assert!(u.within(usable(inv, rules, &m.to)), "wave {w}: {} overcommitted ({u:?})", m.to);
        }
        for (h, n) in out {
            assert!(n <= rules.limits.max_outgoing, "wave {w}: {n} moves out of {h}");
        }
        for (h, n) in inc {
            assert!(n <= rules.limits.max_incoming, "wave {w}: {n} moves into {h}");
        }
        // The wave ends: the sources let go.
        for m in &wave.moves {
            let u = used.get_mut(m.from.as_str()).expect("source holds it");
            *u = *u - m.footprint;
        }
    }
    assert!(sends.is_disjoint(&receives), "a host both sends and receives");
    let placement: BTreeMap<String, String> = at.iter().map(|(p, h)| (p.to_string(), h.to_string())).collect();
    assert_eq!(plan.placement, placement, "placement after is not the moves applied");
    for l in &plan.left {
        assert!(!seen.contains(l.partition.as_str()), "{} both moves and stays", l.partition);
        assert_eq!(placement[&l.partition], l.host);
    }
    if let Some(h) = evacuated {
        assert!(plan.maintenance.iter().any(|m| m == h), "{h} not in maintenance after");
        for p in inv.partitions.iter().filter(|p| p.host == h) {
            assert!(
                seen.contains(p.name.as_str()) || plan.left.iter().any(|l| l.partition == p.name),
                "{} neither leaves {h} nor is named",
                p.name
            );
        }
    }
    if plan.policy == Policy::Consolidate {
        let before: HashSet<&str> = inv.partitions.iter().map(|p| p.host.as_str()).collect();
        let after: HashSet<&str> = at.values().copied().collect();
        assert!(after.len() <= before.len(), "consolidate uses {} hosts, {} before", after.len(), before.len());
        assert!(after.is_subset(&before), "consolidate puts a partition on a host that held none");
    }
    for h in &plan.power_off {
        assert!(!at.values().any(|x| x == h), "{h} to power off still holds a partition");
    }
}
