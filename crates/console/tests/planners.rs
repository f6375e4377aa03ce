//! Table tests of the planners: small inventories written by hand, each
//! with the plan expected of it.

mod check;

use lpm_console::{
    balance, consolidate, evacuate, Health, Host, Inventory, Limits, Mobility, Partition, PartitionState, Plan, PlanError, Policy, Reason,
    Resources, Rules,
};

const GIB: u64 = 1024;

/// A host of `gib` GiB and `gib / 10` cores.
fn host(name: &str, gib: u64) -> Host {
    Host::new(name, Resources::new(gib * GIB, gib * 100))
}

/// A partition of `gib` GiB and `gib / 10` cores.
fn part(name: &str, on: &str, gib: u64) -> Partition {
    Partition::new(name, on, Resources::new(gib * GIB, gib * 100))
}

/// The moves as (partition, from, to), wave by wave.
fn waves(plan: &Plan) -> Vec<Vec<(&str, &str, &str)>> {
    plan.waves.iter().map(|w| w.moves.iter().map(|m| (m.partition.as_str(), m.from.as_str(), m.to.as_str())).collect()).collect()
}

fn checked(inv: &Inventory, rules: &Rules, plan: Result<Plan, PlanError>) -> Plan {
    let plan = plan.expect("a plan");
    check::check(inv, rules, &plan);
    plan
}

#[test]
fn evacuate_spreads_largest_first_to_the_least_loaded() {
    let inv = Inventory {
        hosts: vec![host("a", 100), host("b", 100), host("c", 100)],
        partitions: vec![part("p1", "a", 20), part("p2", "a", 40), part("p3", "b", 30), part("p4", "c", 10)],
    };
    let rules = Rules::default();
    let plan = checked(&inv, &rules, evacuate(&inv, &rules, "a"));
    // p2 (40) first: c ends at 50 %, b at 70 %; then p1 (20): b 50 %, c 70 %.
    assert_eq!(waves(&plan), vec![vec![("p2", "a", "c"), ("p1", "a", "b")]]);
    assert!(plan.left.is_empty());
    assert_eq!(plan.maintenance, vec!["a"]);
    assert_eq!(plan.power_off, vec!["a"]);
    assert_eq!(plan.after.hosts, 2);
    assert_eq!(plan.after.max_load, 50.0);
}

#[test]
fn evacuate_names_what_stays_and_why() {
    let mut inv = Inventory {
        hosts: vec![host("a", 100), host("b", 100), host("c", 100), host("d", 100)],
        partitions: vec![
            part("pinned", "a", 5),
            part("refused", "a", 5),
            part("moving", "a", 5),
            part("huge", "a", 60),
            part("g1", "a", 5),
            part("b1", "b", 40),
            part("g2", "c", 5),
            part("c1", "c", 40),
        ],
    };
    inv.hosts[3].health = Health::Down;
    inv.partitions[0].constraints.pinned = true;
    inv.partitions[1].mobility = Mobility::Immovable { reason: "pid 7 fd 4: a host device".into() };
    inv.partitions[2].state = PartitionState::Migrating;
    inv.partitions[4].constraints.anti_affinity = Some("g".into());
    inv.partitions[6].constraints.anti_affinity = Some("g".into());
    let rules = Rules::default();
    let plan = checked(&inv, &rules, evacuate(&inv, &rules, "a"));
    // huge (60) fits nowhere: b and c have 50 GiB of room under 10 %
    // headroom; g1 avoids c, where g2 is.
    assert_eq!(waves(&plan), vec![vec![("g1", "a", "b")]]);
    let left: Vec<(&str, &Reason)> = plan.left.iter().map(|l| (l.partition.as_str(), &l.reason)).collect();
    assert_eq!(
        left,
        vec![
            ("huge", &Reason::NoTarget { needs: Resources::new(60 * GIB, 6000), candidates: 2, no_room: 2, anti_affinity: 0, zone: 0 }),
            ("pinned", &Reason::Pinned),
            ("refused", &Reason::Immovable { reason: "pid 7 fd 4: a host device".into() }),
            ("moving", &Reason::Migrating),
        ]
    );
    assert_eq!(plan.maintenance, vec!["a"]);
    assert!(plan.power_off.is_empty());
    let text = plan.render();
    assert!(text.contains("  g1 a -> b (live, 5120 MiB, 500 mCPU): evacuate a\n"), "{text}");
    assert!(text.contains("  pinned on a: pinned to its host\n"), "{text}");
    assert!(text.contains("  huge on a: no host can take it (61440 MiB, 6000 mCPU): of 2 hosts that receive, 2 lack room"), "{text}");
}

#[test]
fn evacuate_of_a_down_host_moves_nothing() {
    let mut inv = Inventory { hosts: vec![host("a", 100), host("b", 100)], partitions: vec![part("p", "a", 10)] };
    inv.hosts[0].health = Health::Down;
    let rules = Rules::default();
    let plan = checked(&inv, &rules, evacuate(&inv, &rules, "a"));
    assert_eq!(plan.move_count(), 0);
    assert_eq!(plan.left[0].reason, Reason::HostDown);
}

#[test]
fn waves_follow_the_concurrency_limits() {
    let inv = Inventory {
        hosts: vec![host("a", 100), host("b", 100), host("c", 100)],
        partitions: (0..5).map(|i| part(&format!("p{i}"), "a", 10)).collect(),
    };
    let rules = Rules { limits: Limits { max_outgoing: 2, max_incoming: 1, max_total: 16 }, ..Default::default() };
    let plan = checked(&inv, &rules, evacuate(&inv, &rules, "a"));
    let sizes: Vec<usize> = plan.waves.iter().map(|w| w.moves.len()).collect();
    assert_eq!(sizes, vec![2, 2, 1]);
    let rules = Rules { limits: Limits { max_outgoing: 4, max_incoming: 4, max_total: 1 }, ..Default::default() };
    let plan = checked(&inv, &rules, evacuate(&inv, &rules, "a"));
    assert_eq!(plan.waves.len(), 5);
}

#[test]
fn balance_evens_out_with_few_moves() {
    let inv =
        Inventory { hosts: vec![host("a", 100), host("b", 100)], partitions: (0..4).map(|i| part(&format!("p{i}"), "a", 20)).collect() };
    let rules = Rules::default();
    let plan = checked(&inv, &rules, balance(&inv, &rules));
    assert_eq!(waves(&plan), vec![vec![("p0", "a", "b"), ("p1", "a", "b")]]);
    assert_eq!((plan.before.max_load, plan.before.min_load), (80.0, 0.0));
    assert_eq!((plan.after.max_load, plan.after.min_load), (40.0, 40.0));
    assert!(plan.render().contains("balance: source load 80.0% -> 60.0%, target 0.0% -> 20.0%"));
}

#[test]
fn balance_sends_nothing_to_hosts_down_or_in_maintenance_and_keeps_pinned() {
    let mut inv = Inventory {
        hosts: vec![host("a", 100), host("b", 100), host("c", 100), host("d", 100)],
        partitions: vec![part("pin", "a", 40), part("p1", "a", 20), part("p2", "a", 20)],
    };
    inv.hosts[1].health = Health::Down;
    inv.hosts[2].maintenance = true;
    inv.partitions[0].constraints.pinned = true;
    let rules = Rules::default();
    let plan = checked(&inv, &rules, balance(&inv, &rules));
    // a 80 %, d 0 %: p1 to d (60/20), then p2 would give 40/40.
    assert_eq!(waves(&plan), vec![vec![("p1", "a", "d"), ("p2", "a", "d")]]);
    assert_eq!(plan.after.hosts, 2);
}

#[test]
fn balance_stops_within_the_spread() {
    let inv = Inventory { hosts: vec![host("a", 100), host("b", 100)], partitions: vec![part("p1", "a", 30), part("p2", "b", 25)] };
    let rules = Rules::default();
    let plan = checked(&inv, &rules, balance(&inv, &rules));
    assert_eq!(plan.move_count(), 0);
    assert_eq!(plan.notes, vec!["loads within 5.0 points of each other"]);
}

#[test]
fn balance_gives_up_a_host_whose_partitions_cannot_leave() {
    let mut inv = Inventory {
        hosts: vec![host("a", 100), host("b", 100), host("c", 100)],
        partitions: vec![part("stuck", "a", 80), part("p1", "b", 30), part("p2", "b", 30)],
    };
    inv.partitions[0].mobility = Mobility::Immovable { reason: "a host device".into() };
    let rules = Rules::default();
    let plan = checked(&inv, &rules, balance(&inv, &rules));
    // a cannot shed load: b, the next, sends one partition to c.
    assert_eq!(waves(&plan), vec![vec![("p1", "b", "c")]]);
    assert_eq!(plan.left[0].partition, "stuck");
}

#[test]
fn consolidate_empties_the_emptiest_hosts_into_the_fullest() {
    let inv = Inventory {
        hosts: vec![host("a", 100), host("b", 100), host("c", 100), host("e", 100)],
        partitions: vec![part("a1", "a", 20), part("b1", "b", 20), part("b2", "b", 10), part("c1", "c", 40)],
    };
    let rules = Rules::default();
    let plan = checked(&inv, &rules, consolidate(&inv, &rules));
    // a (20 %) first: a1 to c (60 %); then b (30 %): b1 and b2 to c (90 %).
    assert_eq!(waves(&plan), vec![vec![("a1", "a", "c"), ("b1", "b", "c"), ("b2", "b", "c")]]);
    assert_eq!(plan.power_off, vec!["a", "b", "e"]);
    assert_eq!((plan.before.hosts_used, plan.after.hosts_used), (3, 1));
}

#[test]
fn consolidate_moves_a_host_all_or_nothing() {
    let mut inv = Inventory {
        hosts: vec![host("a", 100), host("b", 100), host("c", 100)],
        partitions: vec![part("a1", "a", 10), part("a2", "a", 30), part("b1", "b", 20), part("b2", "b", 15), part("c1", "c", 60)],
    };
    inv.partitions[0].constraints.pinned = true;
    let rules = Rules::default();
    let plan = checked(&inv, &rules, consolidate(&inv, &rules));
    // b (35 %) first: b1 (20) to c (80 %), b2 (15) no longer fits c and
    // goes to a (55 %), which now receives: its pinned a1 keeps nothing
    // from happening, so it is not named.
    assert_eq!(waves(&plan), vec![vec![("b1", "b", "c"), ("b2", "b", "a")]]);
    assert!(plan.left.is_empty(), "{:?}", plan.left);
    assert_eq!(plan.power_off, vec!["b"]);
    // With a at 70 % and b1, b2 of 25: b1 goes to c (85 %), b2 then fits
    // neither a nor c, so b stays whole; c1 (60) fits nowhere; a is kept
    // by its pinned a1.
    let resize = |p: &mut Partition, gib: u64| {
        p.reserved = Resources::new(gib * GIB, gib * 100);
        p.used = p.reserved;
    };
    resize(&mut inv.partitions[1], 60);
    resize(&mut inv.partitions[2], 25);
    resize(&mut inv.partitions[3], 25);
    let plan = checked(&inv, &rules, consolidate(&inv, &rules));
    assert_eq!(plan.move_count(), 0);
    let left: Vec<(&str, &Reason)> = plan.left.iter().map(|l| (l.partition.as_str(), &l.reason)).collect();
    let no_room =
        |gib: u64| Reason::NoTarget { needs: Resources::new(gib * GIB, gib * 100), candidates: 2, no_room: 2, anti_affinity: 0, zone: 0 };
    assert_eq!(left, vec![("b2", &no_room(25)), ("c1", &no_room(60)), ("a1", &Reason::Pinned)]);
}

#[test]
fn bad_inventories_and_rules_are_refused() {
    let inv = Inventory { hosts: vec![host("a", 100), host("a", 100)], partitions: vec![] };
    assert_eq!(balance(&inv, &Rules::default()).unwrap_err(), PlanError::DuplicateHost { name: "a".into() });
    let inv = Inventory { hosts: vec![host("a", 100)], partitions: vec![part("p", "x", 1)] };
    assert_eq!(consolidate(&inv, &Rules::default()).unwrap_err(), PlanError::UnknownHost { partition: "p".into(), host: "x".into() });
    let inv = Inventory { hosts: vec![host("a", 100)], partitions: vec![] };
    assert_eq!(evacuate(&inv, &Rules::default(), "z").unwrap_err(), PlanError::NoSuchHost { host: "z".into() });
    let rules = Rules { limits: Limits { max_outgoing: 0, ..Default::default() }, ..Default::default() };
    assert_eq!(balance(&inv, &rules).unwrap_err(), PlanError::ZeroLimit { which: "max_outgoing" });
}

#[test]
fn plans_and_inventories_round_trip_through_json() {
    let inv = Inventory { hosts: vec![host("a", 100), host("b", 100)], partitions: vec![part("p", "a", 10)] };
    let json = serde_json::to_string(&inv).expect("inventory to json");
    assert_eq!(serde_json::from_str::<Inventory>(&json).expect("inventory from json"), inv);
    let plan = evacuate(&inv, &Rules::default(), "a").expect("plan");
    let json = serde_json::to_value(&plan).expect("plan to json");
    assert_eq!(json["policy"], serde_json::json!({"policy": "evacuate", "host": "a"}));
    assert_eq!(json["waves"][0]["moves"][0]["why"], serde_json::json!({"why": "evacuate", "host": "a"}));
    assert_eq!(serde_json::from_value::<Plan>(json).expect("plan from json"), plan);
    // A minimal inventory as an operator would write it.
    let inv: Inventory = serde_json::from_str(
        r#"{"hosts":[{"name":"a","capacity":{"memory_mib":1024,"cpu_milli":1000}}],
            "partitions":[{"name":"p","host":"a","reserved":{"memory_mib":64,"cpu_milli":100},
                           "mobility":{"mobility":"immovable","reason":"host device"}}]}"#,
    )
    .expect("minimal inventory");
    assert_eq!(inv.partitions[0].mobility, Mobility::Immovable { reason: "host device".into() });
    let _ = Policy::Balance;
}
