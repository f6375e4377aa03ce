//! The console's policies carried out in a lab of three hosts, through
//! the CLI and the console: evacuate (with a move that fails, and again),
//! maintenance refusing a migrate, release; balance after piling
//! partitions on one host; consolidate; a partition validation refuses,
//! named with its reason. Each dry-run plan is checked against the
//! placement that follows, read from the hosts themselves, and every
//! moved service checks its own memory from outside.

use std::collections::BTreeMap;
use std::time::Duration;

mod common;
use common::lab::TestLab;

const SERVICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/kv_service.py");

/// A kv service (state in memory that it verifies on request) with a
/// CPU limit: CPU is what the planners see of these small partitions.
fn service(lab: &TestLab, name: &str, host: &str, cpus: &str) {
    let argv: Vec<String> = ["python3", SERVICE, "7000", "8"].iter().map(|s| s.to_string()).collect();
    lab.create_with(name, host, Some("96M"), &["--cpus", cpus], &argv).unwrap();
}

fn json_of(lab: &TestLab, args: &[&str]) -> serde_json::Value {
    let out = lab.lpm(args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("lpm {} printed no JSON ({e}): {stdout}\nstderr: {}", args.join(" "), String::from_utf8_lossy(&out.stderr))
    })
}

/// Where each partition is, as the hosts' own agents list them.
fn placement(lab: &TestLab) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for h in ["h1", "h2", "h3"] {
        for p in lab.partitions_on(h) {
            assert_eq!(p.state, "running", "{} on {h}: {p:?}", p.spec.name);
            assert!(out.insert(p.spec.name.clone(), h.to_string()).is_none(), "{} on two hosts", p.spec.name);
        }
    }
    out
}

fn planned(plan: &serde_json::Value) -> BTreeMap<String, String> {
    serde_json::from_value(plan["plan"]["placement"].clone()).unwrap_or_else(|e| panic!("placement ({e}): {plan}"))
}

/// Each service checks every page it wrote, asked at the address its
/// host's agent lists for it.
fn verified(lab: &TestLab, names: &[&str]) {
    let mut ips = BTreeMap::new();
    for h in ["h1", "h2", "h3"] {
        for p in lab.partitions_on(h) {
            ips.insert(p.spec.name.clone(), p.spec.ip.clone().unwrap_or_default());
        }
    }
    for n in names {
        let ip = ips.get(*n).unwrap_or_else(|| panic!("{n} is on no host"));
        let v = lab.kv_verify(ip.split('/').next().unwrap());
        assert!(v.starts_with("verify ok"), "{n}: {v}");
    }
}

fn moved_partitions(run: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(run["summary"]["moved"].clone()).unwrap()
}

#[test]
fn evacuate_goes_on_past_a_failed_move_and_maintenance_holds_until_release() {
    // The first migration out of h1 fails at its stop (once): the
    // partition stays on h1, running, and the other moves go on.
    let lab = TestLab::up_console_with("polevac", 3, &[("LPM_FAULT", "h1:source.frozen=fail")]);
    for (n, cpus) in [("a1", "0.2"), ("a2", "0.3"), ("a3", "0.25")] {
        service(&lab, n, "h1", cpus);
    }
    service(&lab, "b1", "h2", "0.2");
    for n in ["a1", "a2", "a3", "b1"] {
        lab.wait_log(n, "listening", Duration::from_secs(30));
    }
    let dry = json_of(&lab, &["host", "evacuate", "h1", "--dry-run", "--json"]);
    assert!(dry["id"].is_null(), "{dry}");
    let want = planned(&dry);
    assert!(["a1", "a2", "a3"].iter().all(|n| want[*n] != "h1"), "{dry}");
    assert_eq!(want["b1"], "h2");
    // A dry run changes nothing: h1 still takes a migration.
    let before = placement(&lab);
    assert_eq!(before["a1"], "h1");

    let out = lab.lpm(&["host", "evacuate", "h1", "--json"]);
    assert!(!out.status.success(), "a move failed, so the evacuation reports failure");
    let run: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(run["state"], "finished", "{run}");
    let failed = run["summary"]["failed"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{run}");
    let lost = failed[0]["partition"].as_str().unwrap().to_string();
    assert!(failed[0]["reason"].as_str().unwrap().contains("migration"), "{run}");
    assert_eq!(moved_partitions(&run).len(), 2, "{run}");
    let now = placement(&lab);
    for (n, h) in &now {
        if *n == lost {
            assert_eq!(h, "h1", "{n} failed to move: it runs on h1 still");
        } else {
            assert_eq!(h, &want[n], "{n}: planned {}, is on {h}\nplan: {}\nrun: {run}", want[n], dry["text"]);
        }
    }
    verified(&lab, &["a1", "a2", "a3", "b1"]);
    assert_eq!(run["summary"]["maintenance"], serde_json::json!(["h1"]), "{run}");

    // In maintenance: a migrate to h1 through the console is refused by
    // name, and b1 runs on where it was.
    let refused = lab.lpm(&["migrate", "b1", "--to", "h1"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("h1") && err.contains("maintenance"), "{err}");
    assert_eq!(placement(&lab)["b1"], "h2");

    // Again: the fault acted once, the last partition leaves, h1 is empty.
    let dry = json_of(&lab, &["host", "evacuate", "h1", "--dry-run", "--json"]);
    let want = planned(&dry);
    assert_eq!(dry["plan"]["waves"].as_array().unwrap().iter().map(|w| w["moves"].as_array().unwrap().len()).sum::<usize>(), 1, "{dry}");
    // As an operator reads it: the plan, each move, the summary.
    let text = lab.ok(&["host", "evacuate", "h1"]);
    assert!(text.contains(&format!("{lost} moved to {}", want[&lost])), "{text}");
    assert!(text.contains("1 moved, 0 failed, 0 skipped, 0 not movable"), "{text}");
    assert!(text.contains("hosts freed: h1") && text.contains("in maintenance: h1"), "{text}");
    assert!(lab.partitions_on("h1").is_empty());
    assert_eq!(placement(&lab), want);
    verified(&lab, &["a1", "a2", "a3", "b1"]);

    // Released, it takes a migration again.
    lab.ok(&["host", "release", "h1"]);
    lab.ok(&["migrate", "b1", "--to", "h1"]);
    assert_eq!(placement(&lab)["b1"], "h1");
    verified(&lab, &["b1"]);
}

#[test]
fn balance_then_consolidate_follow_their_plans_and_a_refused_partition_is_named() {
    let lab = TestLab::up_console_with("polbal", 3, &[]);
    // Piled on h1, distinct sizes so that no two choices tie.
    let piled = [("c1", "0.3"), ("c2", "0.35"), ("c3", "0.4"), ("c4", "0.45")];
    for (n, cpus) in piled {
        service(&lab, n, "h1", cpus);
    }
    // A process in a user namespace of its own: validation refuses it.
    lab.create_with("u1", "h2", Some("32M"), &["--cpus", "0.05"], &["unshare".into(), "-U".into(), "sleep".into(), "100000".into()])
        .unwrap();
    for (n, _) in piled {
        lab.wait_log(n, "listening", Duration::from_secs(30));
    }
    let names = ["c1", "c2", "c3", "c4"];

    // Without a console there is no plan, and the CLI says why.
    let out = lab.cmd(&["balance", "--dry-run"]).env("LPM_CONSOLE", "none").output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("no console is configured"), "{err}");

    // Named, with the hosts' reason, by a plan that would move it.
    let dry = json_of(&lab, &["host", "evacuate", "h2", "--dry-run", "--json"]);
    let left = dry["plan"]["left"].as_array().unwrap();
    assert_eq!(left.len(), 1, "{dry}");
    assert_eq!(left[0]["partition"], "u1");
    assert_eq!(left[0]["reason"]["kind"], "immovable");
    assert!(left[0]["reason"]["reason"].as_str().unwrap().contains("user namespace"), "{dry}");
    let text = dry["text"].as_str().unwrap();
    assert!(text.contains("u1 on h2: validation refuses to move it"), "{text}");

    let dry = json_of(&lab, &["balance", "--dry-run", "--json"]);
    let want = planned(&dry);
    let moves: usize = dry["plan"]["waves"].as_array().unwrap().iter().map(|w| w["moves"].as_array().unwrap().len()).sum();
    assert!(moves >= 2, "{}", dry["text"]);
    let run = json_of(&lab, &["balance", "--json"]);
    assert_eq!(moved_partitions(&run).len(), moves, "{run}");
    assert_eq!(placement(&lab), want, "{}", dry["text"]);
    verified(&lab, &names);

    let dry = json_of(&lab, &["consolidate", "--dry-run", "--json"]);
    let want = planned(&dry);
    let off: Vec<String> = serde_json::from_value(dry["plan"]["power_off"].clone()).unwrap();
    assert!(!off.is_empty(), "{}", dry["text"]);
    let run = json_of(&lab, &["consolidate", "--json"]);
    assert_eq!(placement(&lab), want, "{}", dry["text"]);
    assert_eq!(run["summary"]["power_off"], serde_json::json!(off), "{run}");
    for h in &off {
        assert!(lab.partitions_on(h).is_empty(), "{h} should be empty");
    }
    verified(&lab, &names);
}
