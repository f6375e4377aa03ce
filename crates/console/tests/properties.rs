//! Property tests: for random inventories and rules, every plan keeps the
//! rules (see `check`): no host overcommitted at any point, limits kept,
//! each partition moved at most once, evacuate empties its host or names
//! what stays, consolidate never uses more hosts than before.

mod check;

use proptest::prelude::*;

use lpm_console::{
    balance, consolidate, evacuate, BalanceGoal, Constraints, Headroom, Health, Host, Inventory, Limits, Mobility, Partition,
    PartitionState, Resources, Rules,
};

fn inventory() -> impl Strategy<Value = Inventory> {
    let host = (1u64..=8, 1u64..=8, 0u64..=3, 0u8..10, 0u8..3);
    let part = (0usize..64, 1u64..=40, 1u64..=40, 0u8..100, 0u8..100, 0u8..4);
    (prop::collection::vec(host, 1..8), prop::collection::vec(part, 0..40)).prop_map(|(hosts, parts)| {
        let mut inv = Inventory::default();
        for (i, (mem, cpu, other, flag, zone)) in hosts.into_iter().enumerate() {
            let mut h = Host::new(&format!("h{i}"), Resources::new(mem * 16 * 1024, cpu * 4000));
            h.other_use = Resources::new(other * 1024, other * 250);
            h.zone = Some(format!("z{zone}"));
            h.health = if flag == 0 { Health::Down } else { Health::Up };
            h.maintenance = flag == 1;
            inv.hosts.push(h);
        }
        let n = inv.hosts.len();
        for (i, (h, mem, cpu, kind, extra, group)) in parts.into_iter().enumerate() {
            let host = inv.hosts[h % n].name.clone();
            let mut p = Partition::new(&format!("p{i}"), &host, Resources::new(mem * 1024, cpu * 100));
            p.used = Resources::new(mem * 1024 * (extra as u64 % 3 + 1) / 2, cpu * 100 * (extra as u64 % 4) / 2);
            match kind {
                0..5 => p.mobility = Mobility::Immovable { reason: "a host device".into() },
                5..10 => p.constraints.pinned = true,
                10..13 => p.state = PartitionState::Migrating,
                13..25 => p.state = PartitionState::Stopped,
                _ => {}
            }
            p.constraints = Constraints {
                anti_affinity: (group > 0 && extra < 40).then(|| format!("g{group}")),
                zone: (extra >= 90).then(|| inv.hosts[h % n].zone.clone()).flatten(),
                ..p.constraints
            };
            inv.partitions.push(p);
        }
        inv
    })
}

fn rules() -> impl Strategy<Value = Rules> {
    (0u32..=30, 0u32..=30, 1usize..=3, 1usize..=3, 1usize..=5, 0u32..=20, 0u32..=5, prop::option::of(0usize..10)).prop_map(
        |(mem, cpu, out, inc, total, spread, eps, max_moves)| Rules {
            headroom: Headroom { memory_pct: mem, cpu_pct: cpu },
            limits: Limits { max_outgoing: out, max_incoming: inc, max_total: total },
            balance: BalanceGoal { spread_pct: spread as f64, epsilon_pct: eps as f64, max_moves },
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn evacuate_keeps_the_rules(inv in inventory(), rules in rules(), pick in 0usize..8) {
        let host = inv.hosts[pick % inv.hosts.len()].name.clone();
        let plan = evacuate(&inv, &rules, &host).expect("plan");
        check::check(&inv, &rules, &plan);
    }

    #[test]
    fn balance_keeps_the_rules(inv in inventory(), rules in rules()) {
        let plan = balance(&inv, &rules).expect("plan");
        check::check(&inv, &rules, &plan);
        if let Some(n) = rules.balance.max_moves {
            prop_assert!(plan.move_count() <= n);
        }
        // A move never raises the highest load.
        prop_assert!(plan.after.max_load <= plan.before.max_load + 1e-9, "{} > {}", plan.after.max_load, plan.before.max_load);
    }

    #[test]
    fn consolidate_keeps_the_rules(inv in inventory(), rules in rules()) {
        let plan = consolidate(&inv, &rules).expect("plan");
        check::check(&inv, &rules, &plan);
        prop_assert!(plan.after.hosts_used <= plan.before.hosts_used);
    }
}
