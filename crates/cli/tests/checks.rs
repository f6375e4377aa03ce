//! What `lpm partition create` and `lpm migrate` refuse before they ask a
//! host for anything, each naming the check and its cause: a name,
//! address or MAC another partition of any host has, an address outside
//! the partition network or one it keeps, limits the host cannot give,
//! migration arguments no migration can honour. Refused creates leave no
//! address recorded; addresses given explicitly are recorded, so the
//! allocator never hands them out again; a delete gives them back, and
//! refuses a name two hosts hold, since their files on shared storage
//! are one.
//!
//! Each test brings up a lab of its own (unique directory and ids), torn
//! down however the test ends.

use std::process::{Command, Stdio};

mod common;
use common::lab::TestLab;
use common::LPM;

/// An init that runs until killed.
fn idle() -> Vec<String> {
    ["sh", "-c", "echo up; while :; do sleep 1; done"].iter().map(|s| s.to_string()).collect()
}

/// `lpm partition create NAME --host HOST EXTRA... -- idle`: stderr when
/// refused, or None when created.
fn create(lab: &TestLab, name: &str, host: &str, extra: &[&str]) -> Option<String> {
    let argv = idle();
    let mut args = vec!["partition", "create", name, "--host", host];
    args.extend(extra);
    args.push("--");
    args.extend(argv.iter().map(String::as_str));
    let out = lab.lpm(&args);
    (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The create is refused and the error contains every one of `needles`.
fn refused(lab: &TestLab, name: &str, host: &str, extra: &[&str], needles: &[&str]) {
    let err = create(lab, name, host, extra).unwrap_or_else(|| panic!("create {name} {extra:?} was accepted"));
    for n in needles {
        assert!(err.contains(n), "create {name} {extra:?}: the refusal does not say {n:?}: {err}");
    }
}

/// The addresses the lab has recorded, as "ip owner".
fn recorded(lab: &TestLab) -> Vec<String> {
    let j = lab.lab_json();
    j["addresses"].as_object().map(|m| m.iter().map(|(ip, o)| format!("{ip} {}", o.as_str().unwrap_or(""))).collect()).unwrap_or_default()
}

#[test]
fn create_refuses_clashes_bad_addresses_and_limits() {
    let lab = TestLab::up("checks", 2);
    assert!(create(&lab, "web", "h1", &[]).is_none(), "the first partition is refused");
    let web_ip = lab.ip_of("web");
    let net = web_ip.rsplit_once('.').unwrap().0.to_string();
    let web_mac = lab.show("web")["spec"]["mac"].as_str().map(String::from);
    // The derived MAC (the spec has none): the same derivation as lpmd's.
    let web_mac = web_mac.unwrap_or_else(|| {
        let spec: lpm_host::partition::PartitionSpec = serde_json::from_value(lab.show("web")["spec"].clone()).unwrap();
        spec.mac_address().unwrap()
    });

    // Unique across every host, not per host.
    refused(&lab, "web", "h2", &[], &["check name: a partition named web exists on h1", "check mac:"]);
    refused(&lab, "db", "h2", &["--ip", &format!("{web_ip}/24")], &[&format!("check ip: {web_ip} is the address of partition web on h1")]);
    refused(&lab, "db", "h2", &["--mac", &web_mac], &[&format!("check mac: {web_mac} is the MAC of partition web on h1")]);

    // Inside the partition network, and none of the addresses it keeps.
    for (ip, why) in [
        ("10.99.7.20/24".to_string(), "outside the partition network".to_string()),
        (format!("{net}.20/16"), "is 24, not 16".into()),
        (format!("{net}.0/24"), "the network address".into()),
        (format!("{net}.255/24"), "the broadcast address".into()),
        (format!("{net}.1/24"), "the gateway address".into()),
        (format!("{net}.250/24"), "the address of the lab's client".into()),
        (format!("{}/24", lab.lab_json()["hosts"][0]["mgmt_addr"].as_str().unwrap()), "the management address of host h1".into()),
    ] {
        refused(&lab, "db", "h2", &["--ip", &ip], &["check subnet:", &why]);
    }

    // Limits: a floor, a positive number of CPUs, what the host allows.
    refused(&lab, "db", "h2", &["--memory", "8M"], &["field memory", "at least 16 MiB"]);
    refused(&lab, "db", "h2", &["--cpus", "0"], &["field cpus"]);
    refused(&lab, "db", "h2", &["--cpus", "-1"], &["field cpus"]);
    refused(&lab, "db", "h2", &["--cpus", "4096"], &["check cpus: 4096 CPUs asked; h2 allows"]);
    refused(&lab, "db", "h2", &["--memory", "100000G"], &["check memory: 102400000 MiB asked; h2 allows"]);
    // Every failing check is told, not only the first.
    refused(&lab, "web", "h2", &["--ip", &format!("{net}.255/24"), "--cpus", "4096"], &["check name:", "check subnet:", "check cpus:"]);
    // No refused create left a partition or an address behind.
    // The header and web's row.
    assert_eq!(lab.ok(&["partition", "list"]).lines().count(), 2, "{}", lab.ok(&["partition", "list"]));
    assert_eq!(recorded(&lab), vec![format!("{web_ip} web")]);

    // An address given explicitly is recorded; the allocator passes over it.
    let next = web_ip.rsplit_once('.').unwrap().1.parse::<u8>().unwrap() + 1;
    let explicit = format!("{net}.{next}");
    assert!(create(&lab, "db", "h2", &["--ip", &format!("{explicit}/24")]).is_none());
    assert!(create(&lab, "auto", "h1", &[]).is_none());
    let auto = lab.ip_of("auto");
    assert_ne!(auto, explicit, "the allocator handed out {explicit} a second time");
    assert_ne!(auto, web_ip);
    let mut want = vec![format!("{web_ip} web"), format!("{explicit} db"), format!("{auto} auto")];
    want.sort();
    let mut got = recorded(&lab);
    got.sort();
    assert_eq!(got, want);

    // A delete gives the address back.
    lab.ok(&["partition", "delete", "db"]);
    assert!(!recorded(&lab).iter().any(|r| r.ends_with(" db")), "{:?}", recorded(&lab));
}

/// Two partitions of one name (made past the CLI, straight through an
/// agent, as older versions allowed) share their files on shared storage:
/// `lpm partition delete` refuses to delete either, naming both hosts,
/// and the first one's console log stays.
#[test]
fn delete_refuses_a_name_two_hosts_hold() {
    let lab = TestLab::up("dupdel", 2);
    assert!(create(&lab, "twin", "h1", &[]).is_none());
    lab.wait_log("twin", "up", std::time::Duration::from_secs(20));
    let mut spec: lpm_host::partition::PartitionSpec = serde_json::from_value(lab.show("twin")["spec"].clone()).unwrap();
    spec.ip = None;
    spec.mac = Some("02:00:00:00:99:01".into());
    lab.create_past_the_cli("h2", spec);
    let out = lab.lpm(&["partition", "delete", "twin"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a delete of a name two hosts hold went ahead");
    assert!(err.contains("partition twin exists on h1 and h2") && err.contains("shared storage"), "{err}");
    assert!(lab.logs("twin").contains("up"), "the console log of twin is gone");
    assert_eq!(lab.state_of("twin"), "running");
}

/// `lpm migrate` arguments no migration can honour are refused by name,
/// before any lab is looked for.
#[test]
fn migrate_refuses_arguments_it_cannot_honour() {
    let nowhere = std::env::temp_dir().join(format!("lpm-no-lab-{}", std::process::id()));
    for (args, said) in [
        (&["--streams", "0"][..], "--streams 0: pages need 1 to 64 streams"),
        (&["--streams", "65"][..], "--streams 65"),
        (&["--max-downtime", "0"][..], "--max-downtime 0"),
        (&["--max-time", "0"][..], "--max-time 0"),
        (&["--compress", "zstd:23"][..], "zstd levels are"),
        (&["--compress", "zstd:-200000"][..], "zstd levels are"),
        (&["--compress", "zstd:x"][..], "not a whole number"),
        (&["--compress", "lz4"][..], "unknown compression"),
    ] {
        let out = Command::new(LPM)
            .args(["migrate", "web", "--to", "h2"])
            .args(args)
            .env("LPM_LAB", &nowhere)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "migrate {args:?} was accepted");
        assert!(err.contains(said) && !err.contains("no lab"), "migrate {args:?}: {err}");
    }
    // zstd's own limits are accepted (they reach the check for a lab).
    for level in ["zstd:-5", "zstd:22", "zstd"] {
        let out = Command::new(LPM).args(["migrate", "web", "--to", "h2", "--compress", level]).env("LPM_LAB", &nowhere).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no lab"), "--compress {level}: {err}");
    }
}
