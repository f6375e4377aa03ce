//! Live migration over a lab of two hosts on this machine: a Python
//! service with its state in memory is moved h1 → h2 → h1 while a client
//! in the client namespace keeps a numbered request stream going over one
//! TCP connection and checks every answer (no reset, nothing lost or
//! repeated). Also the refusals: validation, wrong keys.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const LPM: &str = env!("CARGO_BIN_EXE_lpm");
const SERVICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/kv_service.py");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/kv_client.py");

/// A lab of its own for one test, torn down however the test ends.
struct TestLab {
    dir: PathBuf,
    clients: Vec<Child>,
}

impl TestLab {
    fn up(tag: &str, hosts: usize) -> TestLab {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("lpm-lab-{tag}-{}-{nanos}", std::process::id()));
        let lab = TestLab { dir, clients: Vec::new() };
        let out = lab.lpm(&["lab", "up", "--hosts", &hosts.to_string()]);
        assert!(out.status.success(), "lab up failed: {}", String::from_utf8_lossy(&out.stderr));
        lab
    }

    fn lpm(&self, args: &[&str]) -> Output {
        Command::new(LPM).args(args).env("LPM_LAB", &self.dir).stdin(Stdio::null()).output().expect("run lpm")
    }

    /// Runs lpm and returns its stdout, failing the test with its stderr.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.lpm(args);
        assert!(out.status.success(), "lpm {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn lab_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("lab.json")).unwrap()).unwrap()
    }

    fn client_ns(&self) -> String {
        self.lab_json()["client"]["netns"].as_str().unwrap().to_string()
    }

    /// Starts the checking client against `ip:7000` in the client namespace.
    fn client(&mut self, ip: &str) -> usize {
        let c = Command::new("ip")
            .args(["netns", "exec", &self.client_ns(), "python3", CLIENT, ip, "7000", "600"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the client");
        self.clients.push(c);
        self.clients.len() - 1
    }

    /// Stops client `i` and returns its summary; fails if it saw an error.
    fn finish_client(&mut self, i: usize) -> String {
        let c = &mut self.clients[i];
        let _ = Command::new("kill").args(["-INT", &c.id().to_string()]).status();
        let out = std::mem::replace(c, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "the client saw an error: {text}{}", String::from_utf8_lossy(&out.stderr));
        text
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        for c in &mut self.clients {
            let _ = c.kill();
            let _ = c.wait();
        }
        let out = self.lpm(&["lab", "down"]);
        if !out.status.success() {
            eprintln!("lab down: {}", String::from_utf8_lossy(&out.stderr));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip_of(lab: &TestLab, name: &str) -> String {
    let show: serde_json::Value = serde_json::from_str(&lab.ok(&["partition", "show", name])).unwrap();
    show["spec"]["ip"].as_str().unwrap().split('/').next().unwrap().to_string()
}

fn host_of(lab: &TestLab, name: &str) -> String {
    let show: serde_json::Value = serde_json::from_str(&lab.ok(&["partition", "show", name])).unwrap();
    show["host"].as_str().unwrap().to_string()
}

fn create_service(lab: &TestLab, name: &str, host: &str, mib: u32) {
    let dir = lab.dir.to_string_lossy().into_owned();
    lab.ok(&[
        "partition",
        "create",
        name,
        "--host",
        host,
        "--memory",
        "1G",
        "--volume",
        &dir,
        "--",
        "python3",
        SERVICE,
        "7000",
        &mib.to_string(),
    ]);
}

fn wait_log(lab: &TestLab, name: &str, what: &str) {
    for _ in 0..100 {
        if lab.ok(&["partition", "logs", name]).contains(what) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("partition {name} never logged {what:?}: {}", lab.ok(&["partition", "logs", name]));
}

fn migrate_json(lab: &TestLab, name: &str, to: &str, extra: &[&str]) -> serde_json::Value {
    let out = lab.ok(&[&["migrate", name, "--to", to, "--json"], extra].concat());
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("report is not JSON ({e}): {out}"))
}

#[test]
fn service_moves_there_and_back_with_its_client_connected() {
    let mut lab = TestLab::up("mig", 2);
    create_service(&lab, "kv", "h1", 64);
    wait_log(&lab, "kv", "listening");
    let ip = ip_of(&lab, "kv");
    let c = lab.client(&ip);
    wait_log(&lab, "kv", "connected");
    std::thread::sleep(Duration::from_millis(500));
    // There on one stream, back on three with compression: pages spread
    // over the streams and a barrier at each round's end.
    for (to, extra) in [("h2", &[][..]), ("h1", &["--streams", "3", "--compress", "zstd"][..])] {
        let r = migrate_json(&lab, "kv", to, extra);
        assert_eq!(r["outcome"]["result"], serde_json::json!("completed"), "report: {r}");
        assert_eq!(host_of(&lab, "kv"), to);
        assert!(r["rounds"].as_array().is_some_and(|a| !a.is_empty()), "no pre-copy rounds: {r}");
        if !extra.is_empty() {
            assert_eq!(r["streams"], serde_json::json!(3), "report: {r}");
            assert_eq!(r["compression"], serde_json::json!("zstd:1"), "report: {r}");
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    let summary = lab.finish_client(c);
    assert!(summary.contains("errors 0"), "client: {summary}");
    let n: u64 = summary.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(n > 100, "the client made only {n} requests: {summary}");
    // The reports are kept on both hosts.
    let reports = std::fs::read_dir(Path::new(&lab.dir).join("h2").join("reports")).map(|d| d.count()).unwrap_or(0);
    assert!(reports >= 2, "h2 keeps {reports} reports");
}

#[test]
fn validation_names_what_fails_and_keys_are_checked() {
    let lab = TestLab::up("val", 2);
    create_service(&lab, "kv", "h1", 8);
    wait_log(&lab, "kv", "listening");
    let out = lab.ok(&["migrate", "kv", "--to", "h2", "--validate-only"]);
    assert!(out.contains("ok   memory") && out.contains("ok   kernel"), "validation: {out}");
    let same = lab.lpm(&["migrate", "kv", "--to", "h1"]);
    assert!(!same.status.success());
    assert!(String::from_utf8_lossy(&same.stderr).contains("on h1 already"), "{}", String::from_utf8_lossy(&same.stderr));
    // An address clash on the target is named by the validation, and the
    // partition stays where it was, running.
    let ip = ip_of(&lab, "kv");
    lab.ok(&["partition", "create", "other", "--host", "h2", "--ip", &format!("{ip}/24"), "--", "sleep", "1000"]);
    let clash = lab.lpm(&["migrate", "kv", "--to", "h2"]);
    assert!(!clash.status.success());
    let err = String::from_utf8_lossy(&clash.stderr);
    assert!(err.contains("validation failed") && err.contains("ip:"), "{err}");
    assert_eq!(host_of(&lab, "kv"), "h1");
    let show: serde_json::Value = serde_json::from_str(&lab.ok(&["partition", "show", "kv"])).unwrap();
    assert_eq!(show["state"], serde_json::json!("running"));
    // A wrong key is refused by the agent.
    std::fs::write(lab.dir.join("key"), "00".repeat(32)).unwrap();
    let bad = lab.lpm(&["partition", "list"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("authenticat"), "{}", String::from_utf8_lossy(&bad.stderr));
}
