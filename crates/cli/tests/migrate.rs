//! Live migration over a lab of two hosts on this machine: a Python
//! service with its state in memory is moved h1 → h2 → h1 while a client
//! in the client namespace keeps a numbered request stream going over one
//! TCP connection and checks every answer (no reset, nothing lost or
//! repeated). Also the refusals: validation, wrong keys.

use std::time::Duration;

mod common;
use common::lab::TestLab;

const SERVICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/kv_service.py");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/kv_client.py");

fn create_service(lab: &TestLab, name: &str, host: &str, mib: u32) {
    let argv: Vec<String> = ["python3", SERVICE, "7000", &mib.to_string()].iter().map(|s| s.to_string()).collect();
    lab.create(name, host, Some("1G"), &argv).unwrap();
}

fn migrate_json(lab: &TestLab, name: &str, to: &str, extra: &[&str]) -> serde_json::Value {
    let out = lab.ok(&[&["migrate", name, "--to", to, "--json"], extra].concat());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("report is not JSON ({e}): {out}"))
}

#[test]
fn service_moves_there_and_back_with_its_client_connected() {
    let mut lab = TestLab::up("mig", 2);
    create_service(&lab, "kv", "h1", 64);
    lab.wait_log("kv", "listening", Duration::from_secs(20));
    let ip = lab.ip_of("kv");
    let c = lab.start_client(lab.client_cmd(&["python3", CLIENT, &ip, "7000", "600"]));
    lab.wait_log("kv", "connected", Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    // There on one stream, back on three with compression: pages spread
    // over the streams and a barrier at each round's end.
    for (to, extra) in [("h2", &[][..]), ("h1", &["--streams", "3", "--compress", "zstd"][..])] {
        let r = migrate_json(&lab, "kv", to, extra);
        assert_eq!(r["outcome"]["result"], serde_json::json!("completed"), "report: {r}");
        assert_eq!(lab.host_of("kv"), to);
        assert!(r["rounds"].as_array().is_some_and(|a| !a.is_empty()), "no pre-copy rounds: {r}");
        if !extra.is_empty() {
            assert_eq!(r["streams"], serde_json::json!(3), "report: {r}");
            assert_eq!(r["compression"], serde_json::json!("zstd:1"), "report: {r}");
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    let (ok, summary) = lab.finish_client(c);
    assert!(ok && summary.contains("errors 0"), "client: {summary}");
    let n: u64 = summary.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(n > 100, "the client made only {n} requests: {summary}");
    // The reports are kept on both hosts.
    let reports = std::fs::read_dir(lab.dir.join("h2").join("reports")).map(|d| d.count()).unwrap_or(0);
    assert!(reports >= 2, "h2 keeps {reports} reports");
}

#[test]
fn validation_names_what_fails_and_keys_are_checked() {
    let lab = TestLab::up("val", 2);
    create_service(&lab, "kv", "h1", 8);
    lab.wait_log("kv", "listening", Duration::from_secs(20));
    let out = lab.ok(&["migrate", "kv", "--to", "h2", "--validate-only"]);
    let passed = |check: &str| out.lines().any(|l| l.split_whitespace().take(2).eq(["ok", check]));
    assert!(passed("memory") && passed("kernel") && passed("cpu"), "validation: {out}");
    let same = lab.lpm(&["migrate", "kv", "--to", "h1"]);
    assert!(!same.status.success());
    assert!(String::from_utf8_lossy(&same.stderr).contains("on h1 already"), "{}", String::from_utf8_lossy(&same.stderr));
    // An address clash on the target is named by the validation, and the
    // partition stays where it was, running. (The CLI refuses to create
    // the clash: it is made through h2's agent.)
    let ip = lab.ip_of("kv");
    let refused = lab.lpm(&["partition", "create", "other", "--host", "h2", "--ip", &format!("{ip}/24"), "--", "sleep", "1000"]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("check ip:"), "{}", String::from_utf8_lossy(&refused.stderr));
    let other = lpm_host::partition::PartitionSpec {
        name: "other".into(),
        command: vec!["sleep".into(), "1000".into()],
        memory: None,
        cpus: None,
        rt_runtime_us: None,
        ip: Some(format!("{ip}/24")),
        mac: None,
        volumes: vec![],
        isolation: Default::default(),
    };
    lab.create_past_the_cli("h2", other);
    let clash = lab.lpm(&["migrate", "kv", "--to", "h2"]);
    assert!(!clash.status.success());
    let err = String::from_utf8_lossy(&clash.stderr);
    assert!(err.contains("validation failed") && err.contains("ip:"), "{err}");
    assert_eq!(lab.host_of("kv"), "h1");
    let show: serde_json::Value = serde_json::from_str(&lab.ok(&["partition", "show", "kv"])).unwrap();
    assert_eq!(show["state"], serde_json::json!("running"));
    // Another site's operator is refused at the TLS handshake.
    lab.foreign_operator();
    let bad = lab.lpm(&["partition", "list"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("TLS handshake"), "{}", String::from_utf8_lossy(&bad.stderr));
}
