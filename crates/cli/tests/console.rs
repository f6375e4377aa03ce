//! The console (`lpm console serve`, docs/console.md) against real lpmd
//! hosts in a lab started with `lpm lab up --console`: who may call it,
//! the inventory with a host down, validation with a failing check named,
//! migrations started, stopped, followed across a restart of the console
//! and recovered after a host's lpmd died, and nothing of the inventory
//! or history lost when the console restarts.

use std::time::{Duration, Instant};

use lpm_agent::api::{Request, Response};
use lpm_console::client::ConsoleClient;
use serde_json::{json, Value};

mod common;
use common::lab::*;

/// The longest a migration of these tests may take to end.
const MIGRATION_DEADLINE: Duration = Duration::from_secs(180);

/// The lab's console, as the lab's operator (client certificate), or
/// with `token` instead, or anonymous (`Some("")`: neither).
fn console(lab: &TestLab, token: Option<&str>) -> ConsoleClient {
    let l = lab.lab();
    let c = l.console().expect("the lab has a console");
    let hosts = lpm_host::hosts::HostsFile::load(&l.hosts_file()).expect("the lab's hosts file");
    let op = hosts.operator.expect("the lab's operator");
    let cert = token.is_none().then_some((op.cert.as_path(), op.key.as_path()));
    let token = token.filter(|t| !t.is_empty()).map(str::to_string);
    ConsoleClient::new(c.addr.into(), &c.name, hosts.netns.clone(), &op.ca, cert, token).expect("a console client")
}

fn get(c: &ConsoleClient, path: &str) -> Value {
    c.call("GET", path, None).unwrap_or_else(|e| panic!("GET {path}: {e:#}"))
}

fn post(c: &ConsoleClient, path: &str, body: Value) -> Value {
    c.call("POST", path, Some(&body)).unwrap_or_else(|e| panic!("POST {path}: {e:#}"))
}

fn ok(out: &std::process::Output, what: &str) -> String {
    assert!(out.status.success(), "{what}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until migration `id` ended as the console records it.
fn ended(c: &ConsoleClient, id: &str) -> Value {
    let t = Instant::now();
    loop {
        let m = get(c, &format!("/v1/migrations/{id}"));
        if !matches!(m["state"].as_str(), Some("running" | "in_doubt")) {
            return m;
        }
        assert!(t.elapsed() < MIGRATION_DEADLINE, "migration {id} did not end in {MIGRATION_DEADLINE:?}: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until migration `id` is in pre-copy round 2 or later: well under
/// way, not about to end.
fn under_way(c: &ConsoleClient, id: &str) {
    let t = Instant::now();
    loop {
        let m = get(c, &format!("/v1/migrations/{id}"));
        assert_eq!(m["state"], "running", "migration {id} ended early: {m}");
        if m["progress"]["round"].as_u64().unwrap_or(0) >= 2 {
            return;
        }
        assert!(t.elapsed() < MIGRATION_DEADLINE, "migration {id} never reached round 2: {m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where the console last saw `name`, polled afresh.
fn host_of(c: &ConsoleClient, name: &str) -> Vec<(String, String)> {
    let all: Vec<Value> = c.call("GET", "/v1/partitions?fresh=true", None).expect("partitions");
    all.iter()
        .filter(|p| p["name"] == name)
        .map(|p| (p["host"].as_str().unwrap().to_string(), p["state"].as_str().unwrap().to_string()))
        .collect()
}

/// A partition that dirties 128 MiB while the file `calm` is absent
/// from the volume VOL: its pre-copy never converges within a 1 ms budget
/// then, so its migrations run until stopped or calmed.
fn dirty_program(vol: &str) -> String {
    format!(
        "import os, time\nb = bytearray(128 << 20)\nwhile True:\n    if os.path.exists({:?}):\n        time.sleep(0.05)\n        continue\n    for i in range(0, len(b), 4096):\n        b[i] = (b[i] + 1) & 255\n",
        format!("{vol}/calm")
    )
}

/// The audit's actions by who.
fn audit(c: &ConsoleClient) -> Vec<(String, String, String)> {
    let a: Vec<Value> = c.call("GET", "/v1/audit?limit=1000", None).expect("audit");
    a.iter()
        .map(|e| {
            (e["who"].as_str().unwrap().to_string(), e["action"].as_str().unwrap().to_string(), e["detail"].as_str().unwrap().to_string())
        })
        .collect()
}

/// Who may call (certificate, token; no credentials and a bad token get
/// 401 with an error), a host that does not answer is shown unreachable
/// while the others answer, a failing validation check is named, a
/// partition created and moved through the console and through the CLI
/// switched to it, and a restart of the console keeps hosts, partitions,
/// migrations and the audit.
#[test]
fn console_serves_operators_inventory_validation_and_history() {
    let lab = TestLab::up_console("console", 2);
    let l = lab.lab();
    let config = l.console().unwrap().config.clone();
    let op = console(&lab, None);

    // Who may call.
    for (who, c) in [("no credentials", console(&lab, Some(""))), ("a bad token", console(&lab, Some("lpm_not-a-token")))] {
        for (method, path) in [("GET", "/v1/hosts"), ("GET", "/v1/migrations"), ("POST", "/v1/hosts")] {
            let (status, body) = c.request(method, path, Some(&json!({}))).unwrap();
            assert_eq!(status, 401, "{who}: {method} {path}: {body}");
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{who}: {body}");
        }
    }
    let token = ok(&lab.lpm(&["console", "token", "add", "ann", "--config", config.to_str().unwrap()]), "token add").trim().to_string();
    let ann = console(&lab, Some(&token));
    let hosts: Vec<Value> = ann.call("GET", "/v1/hosts?fresh=true", None).unwrap();
    let names: Vec<&str> = hosts.iter().map(|h| h["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["h1", "h2"]);
    for h in &hosts {
        assert_eq!(h["status"], "up", "{h}");
        assert!(h["capacity"]["memory_bytes"].as_u64().unwrap() > 0, "{h}");
        assert!(h["capacity"]["cpus"].as_f64().unwrap() > 0.0, "{h}");
    }

    // A host that does not answer: shown unreachable, the others answer.
    let mgmt = l.hosts()[0].mgmt_addr.octets();
    let nowhere = format!("{}.{}.{}.99:7412", mgmt[0], mgmt[1], mgmt[2]);
    let (status, h9) = ann.request("POST", "/v1/hosts", Some(&json!({"name": "h9", "api": nowhere}))).unwrap();
    assert_eq!(status, 201, "{h9}");
    assert_eq!(h9["status"], "unreachable", "{h9}");
    assert!(h9["error"].as_str().is_some_and(|e| e.contains("h9")), "{h9}");
    let hosts: Vec<Value> = ann.call("GET", "/v1/hosts?fresh=true", None).unwrap();
    let status: Vec<(&str, &str)> = hosts.iter().map(|h| (h["name"].as_str().unwrap(), h["status"].as_str().unwrap())).collect();
    assert_eq!(status, [("h1", "up"), ("h2", "up"), ("h9", "unreachable")]);
    let (code, _) = ann.request("GET", "/v1/partitions?fresh=true", None).unwrap();
    assert_eq!(code, 200);
    let (code, _) = ann.request("DELETE", "/v1/hosts/h9", None).unwrap();
    assert_eq!(code, 200);

    // The CLI goes through the console: a partition made there.
    ok(&lab.lpm(&["partition", "create", "--host", "h1", "p1", "--", "sleep", "100000"]), "partition create");
    assert_eq!(host_of(&ann, "p1"), [("h1".to_string(), "running".to_string())]);

    // Validation with a check provoked to fail: a partition on the
    // target with p1's address (made on h2 straight, past the console,
    // stopped so the address is not in use twice on the network).
    let mut twin = lab.partitions_on("h1")[0].spec.clone();
    twin.name = "twin".into();
    match lab.call("h2", &Request::Create(twin)).unwrap() {
        Response::Partition(_) => {}
        other => panic!("create on h2: {other:?}"),
    }
    lab.call("h2", &Request::Stop("twin".into())).unwrap();
    let v = post(&ann, "/v1/partitions/p1/validate", json!({"target": "h2"}));
    assert_eq!(v["ok"], false, "{v}");
    let failed: Vec<&str> =
        v["checks"].as_array().unwrap().iter().filter(|c| c["ok"] == false).map(|c| c["name"].as_str().unwrap()).collect();
    assert!(failed.contains(&"ip"), "the ip check fails: {v}");
    let err = lab.fails(&["migrate", "p1", "--to", "h2"]);
    assert!(err.contains("ip"), "the refusal names the check: {err}");
    lab.call("h2", &Request::Delete("twin".into())).unwrap();
    let v = post(&ann, "/v1/partitions/p1/validate", json!({"target": "h2"}));
    assert_eq!(v["ok"], true, "{v}");

    // A migration through the API, as ann.
    let (code, m) = ann.request("POST", "/v1/migrations", Some(&json!({"partition": "p1", "target": "h2"}))).unwrap();
    assert_eq!(code, 202, "{m}");
    let id = m["id"].as_str().unwrap().to_string();
    let m = ended(&ann, &id);
    assert_eq!(m["state"], "completed", "{m}");
    assert_eq!(m["report"]["outcome"]["result"], "completed", "{m}");
    assert_eq!(m["who"], "token:ann");
    assert_eq!(host_of(&ann, "p1"), [("h2".to_string(), "running".to_string())]);
    // And back through the CLI, as the lab's operator.
    let out = ok(&lab.lpm(&["migrate", "p1", "--to", "h1", "--json"]), "migrate back");
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["outcome"]["result"], "completed", "{report}");
    let back = report["id"].as_str().unwrap().to_string();
    assert_eq!(host_of(&op, "p1"), [("h1".to_string(), "running".to_string())]);

    let a = audit(&op);
    let has = |who: &str, action: &str| a.iter().any(|(w, ac, _)| w == who && ac == action);
    assert!(has("token:ann", "host.add") && has("token:ann", "host.remove"), "{a:?}");
    assert!(has("token:ann", "migration.start") && has("operator:lab", "migration.start"), "{a:?}");
    assert!(has("operator:lab", "partition.create") && has("admin", "token.add"), "{a:?}");

    // A restart of the console loses nothing.
    let before: Vec<Value> = op.call("GET", "/v1/migrations", None).unwrap();
    let audit_before = audit(&op).len();
    l.restart_console().expect("restart the console");
    let op = console(&lab, None);
    let after: Vec<Value> = op.call("GET", "/v1/migrations", None).unwrap();
    assert_eq!(before, after);
    assert!(after.iter().any(|m| m["id"] == id.as_str()) && after.iter().any(|m| m["id"] == back.as_str()));
    assert!(audit(&op).len() >= audit_before);
    let hosts: Vec<Value> = op.call("GET", "/v1/hosts", None).unwrap();
    assert_eq!(hosts.len(), 2);
    assert_eq!(host_of(&op, "p1"), [("h1".to_string(), "running".to_string())]);
    // The token survived too.
    let (code, _) = console(&lab, Some(&token)).request("GET", "/v1/hosts", None).unwrap();
    assert_eq!(code, 200);
}

/// A migration stopped mid-way leaves the partition running on its
/// source; one under way when the console is killed is followed to its end
/// by the restarted console from the hosts' records; one whose source's
/// lpmd is killed is recovered through the console once it is back.
#[test]
fn console_stops_follows_across_its_restart_and_recovers_migrations() {
    let lab = TestLab::up_console("console-mig", 2);
    let l = lab.lab();
    let op = console(&lab, None);
    let vol = lab.vol.to_str().unwrap().to_string();
    let calm = lab.vol.join("calm");
    let program = dirty_program(&vol);
    ok(&lab.lpm(&["partition", "create", "--host", "h1", "--volume", &vol, "dirty", "--", "python3", "-c", &program]), "partition create");
    let slow = json!({"partition": "dirty", "target": "h2", "options": {"max_downtime_ms": 1, "max_time_s": 600}});

    // Stopped mid-way.
    let id = post(&op, "/v1/migrations", slow.clone())["id"].as_str().unwrap().to_string();
    under_way(&op, &id);
    post(&op, &format!("/v1/migrations/{id}/stop"), json!({}));
    let m = ended(&op, &id);
    assert_eq!(m["state"], "stopped", "{m}");
    assert_eq!(host_of(&op, "dirty"), [("h1".to_string(), "running".to_string())]);

    // The console killed mid-migration: the restarted one follows it to
    // its end (the partition calmed, so that it converges).
    let calming = json!({"partition": "dirty", "target": "h2", "options": {"max_downtime_ms": 50, "max_time_s": 600}});
    let id2 = post(&op, "/v1/migrations", calming)["id"].as_str().unwrap().to_string();
    under_way(&op, &id2);
    let pid = l.console().unwrap().pid.unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    lab.lab().restart_console().expect("restart the console");
    let op = console(&lab, None);
    let m = get(&op, &format!("/v1/migrations/{id2}"));
    assert_eq!(m["state"], "running", "picked up again: {m}");
    std::fs::write(&calm, b"").unwrap();
    let m = ended(&op, &id2);
    assert_eq!(m["state"], "completed", "{m}");
    assert_eq!(host_of(&op, "dirty"), [("h2".to_string(), "running".to_string())]);
    let all: Vec<Value> = op.call("GET", "/v1/migrations", None).unwrap();
    assert!(all.iter().any(|m| m["id"] == id.as_str() && m["state"] == "stopped"), "history kept: {all:?}");

    // The source's lpmd killed mid-migration: recovered once it is back.
    std::fs::remove_file(&calm).unwrap();
    let back = json!({"partition": "dirty", "target": "h1", "options": {"max_downtime_ms": 1, "max_time_s": 600}});
    let id3 = post(&op, "/v1/migrations", back)["id"].as_str().unwrap().to_string();
    under_way(&op, &id3);
    let h2_pid = lab.lab().host("h2").unwrap().pid.unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(h2_pid), nix::sys::signal::Signal::SIGKILL).unwrap();
    // While h2 is down the console shows it unreachable, h1 answers.
    let t = Instant::now();
    loop {
        let hosts: Vec<Value> = op.call("GET", "/v1/hosts?fresh=true", None).unwrap();
        let s: Vec<&str> = hosts.iter().map(|h| h["status"].as_str().unwrap()).collect();
        if s == ["up", "unreachable"] {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "h2 never shown unreachable: {hosts:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.lab().restart("h2").expect("restart h2's lpmd");
    let (code, r) = op.request("POST", &format!("/v1/migrations/{id3}/recover"), Some(&json!({}))).unwrap();
    assert_eq!(code, 200, "{r}");
    let m = ended(&op, &id3);
    assert!(matches!(m["state"].as_str(), Some("aborted" | "completed")), "{m}");
    let placed = host_of(&op, "dirty");
    assert_eq!(placed.len(), 1, "the partition is on one host: {placed:?}");
    assert_eq!(placed[0].1, "running", "{placed:?}");
    let a = audit(&op);
    assert!(a.iter().any(|(w, ac, d)| w == "operator:lab" && ac == "migration.recover" && d.contains(&id3)), "{a:?}");
}
