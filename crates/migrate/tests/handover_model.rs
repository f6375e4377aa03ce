//! The model check of the migration protocol (crates/migrate/src/model.rs)
//! with every message lost, duplicated or delayed and either agent
//! crashing and restarting between any two actions: the invariants hold in
//! every reachable state, and every state can still settle with exactly
//! one copy running.

use lpm_migrate::model::Bounds;

fn check(bounds: Bounds) {
    check_with(bounds, lpm_migrate::model::Sabotage::None);
}

fn check_with(bounds: Bounds, order: lpm_migrate::model::Sabotage) {
    let t = std::time::Instant::now();
    let o = lpm_migrate::model::explore_sabotaged(bounds, order);
    println!(
        "model {bounds:?} {order:?}: {} states, {} transitions, {} settled, explored in {:.2} s",
        o.states,
        o.transitions,
        o.settled,
        t.elapsed().as_secs_f64()
    );
    assert!(o.violations.is_empty(), "invariants broken:\n{}", o.violations.join("\n\n"));
    assert!(o.stuck.is_empty(), "states that cannot settle:\n{}", o.stuck.join("\n\n"));
}

#[test]
fn no_faults() {
    check(Bounds { crashes: 0, duplicates: 0, rounds: 2 });
}

#[test]
fn lost_duplicated_delayed_messages_and_two_crashes() {
    check(Bounds { crashes: 2, duplicates: 1, rounds: 2 });
}

/// The target's agent writes a record while it restores, or while it
/// lets its copy run (target.rs): the protocol stays safe with the action
/// done before the record.
#[test]
fn the_target_acting_before_its_record_is_written_is_safe() {
    check_with(Bounds { crashes: 2, duplicates: 1, rounds: 2 }, lpm_migrate::model::Sabotage::TargetActsFirst);
}

/// The check can fail: each flaw built into the source's machine is caught.
#[test]
fn a_flawed_protocol_is_caught() {
    use lpm_migrate::model::{explore_sabotaged, Sabotage};
    for (flaw, says) in [(Sabotage::SourceDestroysOnTimeout, "destroyed its copy"), (Sabotage::GoBeforeRecord, "two running copies")] {
        let o = explore_sabotaged(Bounds { crashes: 1, duplicates: 0, rounds: 1 }, flaw);
        println!("model with {flaw:?}: {} states, {} violations found", o.states, o.violations.len());
        assert!(o.violations.iter().any(|v| v.contains(says)), "{flaw:?} not caught (want {says:?}): {:#?}", o.violations);
    }
}

/// docs/wire-protocol.md draws both machines: every state of the code is
/// in its diagram, and the diagrams name no state the code lacks.
#[test]
fn the_diagrams_show_every_state() {
    use lpm_migrate::handover::{SourceState, TargetState};
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/wire-protocol.md")).unwrap();
    let blocks: Vec<&str> = doc.split("```mermaid").skip(1).map(|b| b.split("```").next().unwrap()).collect();
    assert_eq!(blocks.len(), 2, "docs/wire-protocol.md should draw the source's and the target's machines");
    let states = |block: &str| -> std::collections::BTreeSet<String> {
        block
            .lines()
            .filter_map(|l| l.split_once("-->"))
            .flat_map(|(a, b)| [a.trim().to_string(), b.split(':').next().unwrap().trim().to_string()])
            .filter(|s| s != "[*]")
            .collect()
    };
    let source: std::collections::BTreeSet<String> = SourceState::ALL.iter().map(|s| s.name().to_string()).collect();
    let target: std::collections::BTreeSet<String> = TargetState::ALL.iter().map(|s| s.name().to_string()).collect();
    assert_eq!(states(blocks[0]), source, "the source's diagram");
    assert_eq!(states(blocks[1]), target, "the target's diagram");
}
