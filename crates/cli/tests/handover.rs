//! Safe moves (issue 9): a partition is never lost and never runs twice,
//! whatever fails during its migration.
//!
//! Each case migrates the kv service (state in memory, 64 MiB it keeps
//! rewriting, a client checking every answer over one connection) from h1
//! to h2 with one fault injected (`LPM_FAULT`, crates/agent/src/fault.rs):
//! - either agent killed before each action of its protocol machine
//!   (`source.record.handing-over` is "before the record of go is
//!   written", `target.run` "before the copy is let run", ...), then
//!   restarted;
//! - each protocol message lost on the way (the connection stays up, as
//!   when a network drops a segment for good).
//!
//! In every case the partition must end running on exactly one host (the
//! one the protocol says, or either where a lost message races a
//! resolver), with every answer right and every page of its memory intact
//! (the service's own check, `verify`), nothing of it left on the other
//! host, both hosts' records settled and `lpm migration list` telling
//! where it went. The client's connection survives in every case: the
//! partition is stopped for at most a few seconds. The cases of one family
//! run one after the other and the test prints a table of them all.
//!
//! Also here: `lpm migration stop` from a second terminal and Ctrl-C at
//! each pre-copy round and at the stop; the CLI killed mid-migration; and
//! every validation check made to fail once, before anything moves.

use std::fmt::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lpm_agent::api::{MigrateRequest, Request};

mod common;
use common::lab::{TestLab, KV_SERVICE};

/// The movers' timeout in these labs: a peer that goes silent before the
/// decision is given up after this long.
const MOVER_TIMEOUT_MS: &str = "3000";

/// Where the partition must end.
#[derive(Clone, Copy, Debug, PartialEq)]
enum End {
    /// Back on h1: the decision was abort (or never made).
    Source,
    /// On h2: the decision was go.
    Target,
    /// Either: a lost message races a resolver that may learn the outcome
    /// first.
    Either,
}

/// One fault and what it must lead to.
struct Case {
    /// `LPM_FAULT` for the lab's agents.
    fault: &'static str,
    /// The host whose agent the fault kills (it is restarted, without the
    /// fault).
    kills: Option<&'static str>,
    end: End,
}

const fn kill(fault: &'static str, host: &'static str, end: End) -> Case {
    Case { fault, kills: Some(host), end }
}

const fn lose(fault: &'static str, end: End) -> Case {
    Case { fault, kills: None, end }
}

/// The source's agent dies before each step of its side.
const SOURCE_KILLS: &[Case] = &[
    kill("h1:source.record.preparing=kill", "h1", End::Source),
    kill("h1:source.send.prepare=kill", "h1", End::Source),
    kill("h1:source.record.pre-copy=kill", "h1", End::Source),
    kill("h1:source.round=kill", "h1", End::Source),
    kill("h1:source.freeze=kill", "h1", End::Source),
    kill("h1:source.frozen=kill", "h1", End::Source),
    kill("h1:source.record.handing-over=kill", "h1", End::Source),
    kill("h1:source.send.go=kill", "h1", End::Target),
    kill("h1:source.record.completed=kill", "h1", End::Target),
    kill("h1:source.destroy=kill", "h1", End::Target),
];

/// The target's agent dies before each step of its side.
const TARGET_KILLS: &[Case] = &[
    kill("h2:target.record.prepared=kill", "h2", End::Source),
    kill("h2:target.send.prepared=kill", "h2", End::Source),
    kill("h2:target.pages=kill+after=3", "h2", End::Source),
    kill("h2:target.send.round-done=kill", "h2", End::Source),
    kill("h2:target.restore=kill", "h2", End::Source),
    kill("h2:target.restored=kill", "h2", End::Source),
    kill("h2:target.send.restored=kill", "h2", End::Source),
    // "Restored" is sent, not yet recorded: the source may decide go, but
    // the target's restart finds its copy not recorded complete, destroys
    // it and says so, and the source's copy runs again.
    kill("h2:target.record.restored=kill", "h2", End::Source),
    kill("h2:target.record.running=kill", "h2", End::Target),
    kill("h2:target.run=kill", "h2", End::Target),
    kill("h2:target.send.running=kill", "h2", End::Target),
    kill("h2:target.finish=kill", "h2", End::Target),
];

/// Each message of the protocol lost once.
const LOST_MESSAGES: &[Case] = &[
    lose("h1:source.send.prepare=drop", End::Source),
    lose("h2:target.send.prepared=drop", End::Source),
    lose("h1:source.send.round-end=drop", End::Source),
    lose("h2:target.send.round-done=drop", End::Source),
    // The second round end: the stop's own barrier when pre-copy took one
    // round.
    lose("h1:source.send.round-end=drop+after=1", End::Source),
    lose("h1:source.send.restore=drop", End::Source),
    lose("h2:target.send.restored=drop", End::Either),
    lose("h1:source.send.go=drop", End::Target),
    lose("h2:target.send.running=drop", End::Target),
    lose("h1:source.send.abort=drop,h2:target.restore=fail", End::Source),
];

/// The kv service on h1 with its client; (client, address).
fn kv(lab: &mut TestLab) -> (usize, String) {
    let vol = lab.vol.to_string_lossy().into_owned();
    lab.ok(&["partition", "create", "kv", "--host", "h1", "--memory", "512M", "--volume", &vol, "--", "python3", KV_SERVICE, "7000", "64"]);
    lab.wait_log("kv", "listening", Duration::from_secs(20));
    let ip = lab.ip_of("kv");
    let c = lab.kv_client(&ip);
    lab.wait_log("kv", "connected", Duration::from_secs(20));
    (c, ip)
}

/// The migrations the hosts record, as `lpm migration list --all --json`.
fn migrations(lab: &TestLab) -> Vec<serde_json::Value> {
    let out = lab.lpm(&["migration", "list", "--all", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Waits until the one migration of the lab is settled on both hosts;
/// its row.
fn settled(lab: &TestLab, timeout: Duration) -> serde_json::Value {
    let t = Instant::now();
    loop {
        let rows = migrations(lab);
        if let [row] = rows.as_slice() {
            let done = |side: &str| row[side].is_null() || row[side]["settled"] == serde_json::json!(true);
            if done("source_record")
                && done("target_record")
                && ["completed", "rolled back", "stopped"].contains(&row["state"].as_str().unwrap_or(""))
            {
                return row.clone();
            }
        }
        if t.elapsed() > timeout {
            panic!(
                "the migration did not settle in {timeout:?}: {}\nh1:\n{}\nh2:\n{}",
                serde_json::to_string_pretty(&rows).unwrap(),
                lab.lpmd_log_tail("h1", 40),
                lab.lpmd_log_tail("h2", 40)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Where kv runs, checked from outside: listed as running by exactly one
/// host, its init alive, thawed, its NIC on the bridge; nothing of it left
/// on the other.
fn where_it_runs(lab: &TestLab) -> &'static str {
    let on: Vec<&'static str> =
        ["h1", "h2"].into_iter().filter(|h| lab.partitions_on(h).iter().any(|p| p.spec.name == "kv" && p.state == "running")).collect();
    let [host] = on.as_slice() else { panic!("kv runs on {on:?}") };
    let host = *host;
    let l = lab.lab();
    let ctx = lpm_host::partition::HostCtx { host: host.into(), dir: lab.dir.clone(), bridge: "lpmbr0".into(), prefix: l.prefix() };
    let events = lpm_host::cgroup::Layout::current().unwrap().v2_root().join(ctx.cgroup_rel("kv")).join("cgroup.events");
    let events = std::fs::read_to_string(&events).unwrap_or_else(|e| panic!("{}: {e}", events.display()));
    assert!(events.contains("frozen 0"), "kv stays frozen on {host}: {events}");
    let link = Command::new("ip").args(["-n", &l.host(host).unwrap().netns, "-o", "link", "show", &ctx.veth_name("kv")]).output().unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains(",UP") || link.contains("<UP"), "kv's network stays locked on {host}: {link}");
    assert!(link.contains("master lpmbr0"), "kv's NIC is off the bridge on {host}: {link}");
    let other = if host == "h1" { "h2" } else { "h1" };
    lab.wait_clean(other, Duration::from_secs(15));
    assert!(lab.partitions_on(other).iter().all(|p| p.spec.name != "kv"), "{other} still lists kv");
    host
}

/// Runs one case in a lab of its own; a line for the table.
fn run_case(tag: &str, case: &Case) -> String {
    let t0 = Instant::now();
    let mut lab = TestLab::up_with(tag, 2, &[("LPM_FAULT", case.fault), ("LPM_MOVER_TIMEOUT_MS", MOVER_TIMEOUT_MS)]);
    let (c, ip) = kv(&mut lab);
    let killed = case.kills.map(|h| (h, lab.lpmd_pid(h).expect("lpmd pid")));
    let out = lab.lpm(&["migrate", "kv", "--to", "h2", "--json"]);
    let cli = if out.status.success() { "ok".to_string() } else { String::from_utf8_lossy(&out.stderr).trim().to_string() };
    let point = case.fault.split(',').next().unwrap().split('=').next().unwrap().split(':').nth(1).unwrap();
    if let Some((host, pid)) = killed {
        let t = Instant::now();
        while std::path::Path::new(&format!("/proc/{pid}/cwd")).exists() {
            assert!(t.elapsed() < Duration::from_secs(20), "{host}'s lpmd survived {}: {cli}\n{}", case.fault, lab.log_of(host));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(lab.log_of(host).contains(point), "the fault at {point} did not fire:\n{}", lab.log_of(host));
        lab.lab().restart(host).unwrap_or_else(|e| panic!("restart {host}'s lpmd: {e}"));
    } else {
        let log = format!("{}{}", lab.log_of("h1"), lab.log_of("h2"));
        assert!(log.contains("fault injected") && log.contains(point), "the fault at {point} did not fire: {cli}\n{log}");
    }
    let row = settled(&lab, Duration::from_secs(40));
    let host = where_it_runs(&lab);
    let state = row["state"].as_str().unwrap_or("").to_string();
    match (case.end, host) {
        (End::Source | End::Either, "h1") => assert_eq!(state, "rolled back", "{row}"),
        (End::Target | End::Either, "h2") => assert_eq!(state, "completed", "{row}"),
        (want, got) => panic!("{}: kv ended on {got}, want {want:?}; the CLI said: {cli}\n{row}", case.fault),
    }
    // A migration that completed says so, one that did not says why;
    // none is reported completed while kv runs on h1.
    if out.status.success() {
        assert_eq!(host, "h2", "lpm migrate reported success, yet kv runs on h1");
    }
    let verdict = lab.kv_verify(&ip);
    assert!(verdict.starts_with("verify ok"), "kv's memory after {}: {verdict}", case.fault);
    lab.client_alive(c);
    let n = lab.finish_kv_client(c);
    let cli_short: String = cli.chars().take(70).collect();
    format!(
        "{:58} {:3} {:12} {:5} {:>6} {:5.1} s  {}",
        case.fault,
        host,
        state,
        n,
        verdict.split(' ').nth(1).unwrap_or(""),
        t0.elapsed().as_secs_f64(),
        cli_short
    )
}

fn run_family(tag: &str, cases: &[Case]) {
    let mut table = String::new();
    let mut failed = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let r = std::panic::catch_unwind(|| run_case(&format!("{tag}{i}"), case));
        match r {
            Ok(line) => writeln!(table, "ok   {line}").unwrap(),
            Err(e) => {
                let why =
                    e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                writeln!(table, "FAIL {}: {}", case.fault, why.lines().next().unwrap_or("")).unwrap();
                failed.push(format!("{}:\n{why}", case.fault));
            }
        }
    }
    println!("{:63} {:3} {:12} {:5} {:>6} {:7}  lpm migrate said", "case", "on", "migration", "asks", "verify", "time");
    print!("{table}");
    assert!(failed.is_empty(), "{} of {} cases failed:\n{}", failed.len(), cases.len(), failed.join("\n\n"));
}

#[test]
fn source_agent_killed_at_each_step() {
    run_family("hsk", SOURCE_KILLS);
}

#[test]
fn target_agent_killed_at_each_step() {
    run_family("htk", TARGET_KILLS);
}

#[test]
fn each_message_lost_once() {
    run_family("hlm", LOST_MESSAGES);
}

/// The id of the lab's one migration, once the hosts record it.
fn migration_id(lab: &TestLab) -> String {
    let t = Instant::now();
    loop {
        if let Some(id) = migrations(lab).first().and_then(|r| r["id"].as_str().map(String::from)) {
            return id;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "no migration recorded");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How a running migration is stopped.
#[derive(Clone, Copy, Debug)]
enum Stopper {
    /// `lpm migration stop ID`, from a second terminal.
    Command,
    /// Ctrl-C on `lpm migrate --yes`.
    CtrlC,
}

/// Stops a migration while it is held at `point` (a fault that sleeps
/// there): the partition keeps running on h1, nothing is left on h2, the
/// records say stopped.
fn stop_at(tag: &str, fault: &str, point: &str, how: Stopper) -> String {
    let t0 = Instant::now();
    let mut lab = TestLab::up_with(tag, 2, &[("LPM_FAULT", fault), ("LPM_MOVER_TIMEOUT_MS", MOVER_TIMEOUT_MS)]);
    let (c, ip) = kv(&mut lab);
    let mig = lab.cmd(&["migrate", "kv", "--to", "h2", "--yes"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    lab.wait_for_log("h1", &format!("point=\"{point}\""), Duration::from_secs(30));
    let id = migration_id(&lab);
    match how {
        Stopper::Command => {
            let out = lab.ok(&["migration", "stop", &id]);
            assert!(out.contains("stopped") && out.contains("runs on h1"), "{out}");
        }
        Stopper::CtrlC => {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(mig.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
        }
    }
    let out = mig.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("stopped by request"), "lpm migrate after the stop: {err}");
    let row = settled(&lab, Duration::from_secs(20));
    assert_eq!(row["state"], serde_json::json!("stopped"), "{row}");
    assert_eq!(where_it_runs(&lab), "h1");
    let verdict = lab.kv_verify(&ip);
    assert!(verdict.starts_with("verify ok"), "kv's memory after the stop: {verdict}");
    lab.client_alive(c);
    lab.finish_kv_client(c);
    // Stopped, not broken: it moves when asked again.
    assert!(lab.ok(&["migrate", "kv", "--to", "h2"]).contains("completed"));
    format!("{how:?} at {point}: stopped in {:.1} s", t0.elapsed().as_secs_f64())
}

/// `lpm migration stop` from a second terminal, and Ctrl-C on `lpm
/// migrate --yes`: after the first round's barrier, as the stop begins,
/// and once the partition is frozen and its state sent. (The source holds
/// at each point for 1.5 s, within the target's patience of 3 s; a stop
/// at a later round is `stop_at_the_second_round_of_a_busy_partition`.)
#[test]
fn stop_and_ctrl_c_at_each_round_and_at_the_stop() {
    let mut lines = Vec::new();
    for (i, how) in [Stopper::Command, Stopper::CtrlC].into_iter().enumerate() {
        lines.push(stop_at(&format!("hst{i}a"), "h1:source.round=sleep=1500", "source.round", how));
        lines.push(stop_at(&format!("hst{i}b"), "h1:source.freeze=sleep=1500", "source.freeze", how));
        lines.push(stop_at(&format!("hst{i}c"), "h1:source.frozen=sleep=1500", "source.frozen", how));
    }
    println!("{}", lines.join("\n"));
}

/// Once go is recorded, a stop is refused as too late, and the
/// migration completes.
#[test]
fn stop_after_go_is_too_late() {
    let mut lab = TestLab::up_with("hstl", 2, &[("LPM_FAULT", "h2:target.run=sleep=1500"), ("LPM_MOVER_TIMEOUT_MS", MOVER_TIMEOUT_MS)]);
    let (c, ip) = kv(&mut lab);
    let mig = lab.cmd(&["migrate", "kv", "--to", "h2"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    lab.wait_for_log("h2", "point=\"target.run\"", Duration::from_secs(30));
    let id = migration_id(&lab);
    let err = lab.fails(&["migration", "stop", &id]);
    assert!(err.contains("too late"), "{err}");
    let out = mig.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    settled(&lab, Duration::from_secs(20));
    assert_eq!(where_it_runs(&lab), "h2");
    assert!(lab.kv_verify(&ip).starts_with("verify ok"));
    lab.finish_kv_client(c);
}

/// The CLI killed in the middle of a migration: the migration is the
/// source agent's and goes on to its end; the records tell it.
#[test]
fn cli_killed_mid_migration() {
    let mut lab = TestLab::up_with("hcli", 2, &[("LPM_FAULT", "h1:source.round=sleep=1000"), ("LPM_MOVER_TIMEOUT_MS", MOVER_TIMEOUT_MS)]);
    let (c, ip) = kv(&mut lab);
    let mut mig = lab.cmd(&["migrate", "kv", "--to", "h2"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    lab.wait_for_log("h1", "point=\"source.round\"", Duration::from_secs(30));
    mig.kill().unwrap();
    mig.wait().unwrap();
    let row = settled(&lab, Duration::from_secs(30));
    assert_eq!(row["state"], serde_json::json!("completed"), "{row}");
    assert_eq!(where_it_runs(&lab), "h2");
    assert!(lab.kv_verify(&ip).starts_with("verify ok"));
    lab.finish_kv_client(c);
}

/// Every check of a migration's validation made to fail once, each named
/// with its cause, and nothing moved or made: the partition never stopped,
/// no migration recorded, nothing on the target. A partition holding a
/// packet socket with a ring is refused here, not at the stop after
/// pre-copy.
#[test]
fn every_validation_check_fails_by_name_before_anything_moves() {
    let mut lab = TestLab::up_with(
        "hval",
        3,
        &[("LPM_MAX_INCOMING", "1"), ("LPM_MAX_OUTGOING", "1"), ("LPM_FAULT", "h1:source.round=sleep=4000,h3:source.round=sleep=4000")],
    );
    let (c, _ip) = kv(&mut lab);
    let mut seen = Vec::new();
    // Refused, naming `check`, with nothing made: at most a settled record
    // on the source saying so (a check of the target's), none on the
    // target, nothing of the partition there.
    let refused = |lab: &TestLab, args: &[&str], check: &str, seen: &mut Vec<String>| {
        let before = lab.leftovers("h2");
        let err = lab.fails(args);
        assert!(err.contains(&format!("{check}:")), "{}: the refusal does not name {check}: {err}", args.join(" "));
        for row in migrations(lab) {
            let moved = row["state"] != serde_json::json!("refused") || !row["target_record"].is_null();
            assert!(!moved, "{check}: a migration went further than its validation: {row}");
        }
        assert_eq!(lab.leftovers("h2"), before, "{check}: pieces on h2");
        seen.push(format!("{check:9} {}", err.lines().last().unwrap_or("").chars().take(150).collect::<String>()));
    };

    // arguments: through the API (the CLI refuses them itself first).
    let l = lab.lab();
    let req = MigrateRequest {
        name: "kv".into(),
        target: "h2".into(),
        target_addr: l.host("h2").unwrap().listen.to_string(),
        max_downtime_ms: 0,
        max_total_s: 60,
        force: false,
        streams: 0,
        compress: Some(99),
        validate_only: false,
    };
    let e = lab.call("h1", &Request::Migrate(req)).unwrap_err().to_string();
    assert!(e.contains("--streams 0") && e.contains("--max-downtime 0") && e.contains("zstd level 99"), "{e}");
    seen.push(format!("{:9} {e}", "arguments"));

    // state: a packet socket with a receive ring, refused at validation
    // while it runs.
    let vol = lab.vol.to_string_lossy().into_owned();
    let packet = "import socket, struct, time\ns = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
                  s.setsockopt(263, 10, 1)\ns.setsockopt(263, 5, struct.pack('IIII', 4096, 4, 2048, 8))\n\
                  print('holding', flush=True)\ntime.sleep(1000)";
    lab.ok(&["partition", "create", "pk", "--host", "h1", "--volume", &vol, "--", "python3", "-c", packet]);
    lab.wait_log("pk", "holding", Duration::from_secs(20));
    let pid = lab.pid_of("pk");
    refused(&lab, &["migrate", "pk", "--to", "h2"], "state", &mut seen);
    assert!(seen.last().unwrap().contains("PACKET_RX_RING"), "{seen:?}");
    assert!(!lab.log_of("h1").contains("partition=pk state=\"Frozen\""), "pk was stopped");
    assert_eq!(lab.pid_of("pk"), pid, "pk did not run on");
    let v = lab.lpm(&["migrate", "pk", "--to", "h2", "--validate-only", "--json"]);
    assert!(!v.status.success(), "--validate-only exited 0 with a failed check");
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&v.stdout).unwrap();
    assert!(checks.iter().any(|c| c["name"] == "state" && c["ok"] == serde_json::json!(false)), "{checks:?}");
    lab.ok(&["partition", "delete", "pk"]);

    // name and mac: partitions of h2 made past the CLI, which refuses them.
    let spec = |name: &str, mac: Option<String>| lpm_host::partition::PartitionSpec {
        name: name.into(),
        command: vec!["sleep".into(), "1000".into()],
        memory: None,
        cpus: None,
        rt_runtime_us: None,
        ip: None,
        mac,
        volumes: vec![],
        isolation: Default::default(),
    };
    lab.create_past_the_cli("h2", spec("kv", Some("02:00:00:00:00:99".into())));
    refused(&lab, &["migrate", "kv", "--to", "h2"], "name", &mut seen);
    lab.call("h2", &Request::Delete("kv".into())).unwrap();
    let kv_mac = lab.show("kv")["spec"]["mac"].as_str().map(String::from);
    let derived = lpm_host::partition::PartitionSpec { ..spec("kv", kv_mac) }.mac_address().unwrap();
    lab.create_past_the_cli("h2", spec("other", Some(derived)));
    refused(&lab, &["migrate", "kv", "--to", "h2"], "mac", &mut seen);
    lab.call("h2", &Request::Delete("other".into())).unwrap();

    // memory and cpus: h2's cgroup for partitions limited to 300 MiB and
    // half a CPU; kv asks for 512 MiB, a partition of one CPU for more.
    let layout = lpm_host::cgroup::Layout::current().unwrap();
    let host_cg = format!("{}/h2", l.prefix());
    let (mem_dir, mem_file, cpu_dir) = match layout {
        lpm_host::cgroup::Layout::Hybrid { memory, cpu, .. } => (memory.join(&host_cg), "memory.limit_in_bytes", cpu.join(&host_cg)),
        lpm_host::cgroup::Layout::Unified { root } => (root.join(&host_cg), "memory.max", root.join(&host_cg)),
    };
    std::fs::create_dir_all(&mem_dir).unwrap();
    std::fs::write(mem_dir.join(mem_file), (300u64 << 20).to_string()).unwrap();
    refused(&lab, &["migrate", "kv", "--to", "h2"], "memory", &mut seen);
    std::fs::write(mem_dir.join(mem_file), if mem_file == "memory.max" { "max".to_string() } else { "-1".to_string() }).unwrap();
    std::fs::create_dir_all(&cpu_dir).unwrap();
    match layout {
        lpm_host::cgroup::Layout::Hybrid { .. } => {
            std::fs::write(cpu_dir.join("cpu.cfs_period_us"), "100000").unwrap();
            std::fs::write(cpu_dir.join("cpu.cfs_quota_us"), "50000").unwrap();
        }
        lpm_host::cgroup::Layout::Unified { .. } => std::fs::write(cpu_dir.join("cpu.max"), "50000 100000").unwrap(),
    }
    lab.ok(&["partition", "create", "one", "--host", "h1", "--cpus", "1", "--volume", &vol, "--", "sleep", "1000"]);
    refused(&lab, &["migrate", "one", "--to", "h2"], "cpus", &mut seen);
    match layout {
        lpm_host::cgroup::Layout::Hybrid { .. } => std::fs::write(cpu_dir.join("cpu.cfs_quota_us"), "-1").unwrap(),
        lpm_host::cgroup::Layout::Unified { .. } => std::fs::write(cpu_dir.join("cpu.max"), "max 100000").unwrap(),
    }

    // network: h2 without the partition network's bridge.
    let h2ns = l.host("h2").unwrap().netns.clone();
    let st = Command::new("ip").args(["-n", &h2ns, "link", "set", "lpmbr0", "down"]).status().unwrap();
    assert!(st.success());
    let st = Command::new("ip").args(["-n", &h2ns, "link", "set", "lpmbr0", "name", "lpmbr9"]).status().unwrap();
    assert!(st.success());
    refused(&lab, &["migrate", "kv", "--to", "h2"], "network", &mut seen);
    Command::new("ip").args(["-n", &h2ns, "link", "set", "lpmbr9", "name", "lpmbr0"]).status().unwrap();
    Command::new("ip").args(["-n", &h2ns, "link", "set", "lpmbr0", "up"]).status().unwrap();

    // outgoing and incoming: one migration held (a fault sleeps after its
    // first round) while another is asked; the limits are 1 and 1.
    let held = lab.cmd(&["migrate", "one", "--to", "h2"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    lab.wait_for_log("h1", "point=\"source.round\"", Duration::from_secs(30));
    let err = lab.fails(&["migrate", "kv", "--to", "h3"]);
    assert!(err.contains("outgoing:"), "{err}");
    seen.push(format!("{:9} {}", "outgoing", err.lines().last().unwrap_or("")));
    lab.ok(&["partition", "create", "three", "--host", "h3", "--volume", &vol, "--", "sleep", "1000"]);
    let err = lab.fails(&["migrate", "three", "--to", "h2"]);
    assert!(err.contains("incoming:"), "{err}");
    seen.push(format!("{:9} {}", "incoming", err.lines().last().unwrap_or("")));
    let out = held.wait_with_output().unwrap();
    assert!(out.status.success(), "the held migration failed");
    assert_eq!(lab.host_of("one"), "h2");

    // kv never left h1, never stopped, its client saw nothing wrong.
    assert_eq!(lab.host_of("kv"), "h1");
    lab.client_alive(c);
    lab.finish_kv_client(c);
    println!("{}", seen.join("\n"));
}

/// The hosts cannot reach each other at the handover: go is recorded but
/// lost, and the management network no longer carries the hosts' traffic
/// to each other, so neither resolver gets through; both keep their
/// copies (the source's frozen, the target's parked) and `lpm migrate`
/// says the migration is in doubt. `lpm migration recover`, which still
/// reaches both hosts (the operator's console keeps its routes to each),
/// relays their records and finishes it: the partition runs on h2, the
/// frozen copy on h1 goes.
#[test]
fn recover_finishes_a_migration_whose_hosts_cannot_meet() {
    let mut lab = TestLab::up_with(
        "hrec",
        2,
        &[("LPM_FAULT", "h1:source.record.handing-over=sleep=1500,h1:source.send.go=drop"), ("LPM_MOVER_TIMEOUT_MS", MOVER_TIMEOUT_MS)],
    );
    let (c, ip) = kv(&mut lab);
    let mig = lab.cmd(&["migrate", "kv", "--to", "h2"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    lab.wait_for_log("h1", "point=\"source.record.handing-over\"", Duration::from_secs(30));
    // While the source holds before recording go: each host loses its
    // route to the other on the management network (blackhole routes:
    // packets dropped without a word, as on a cut link); the operator's
    // address and the partition network, where the client is, stay.
    let l = lab.lab();
    let (h1, h2) = (l.host("h1").unwrap().clone(), l.host("h2").unwrap().clone());
    let link = |state: &str| {
        let op = if state == "down" { "add" } else { "del" };
        for (ns, other) in [(&h1.netns, h2.mgmt_addr), (&h2.netns, h1.mgmt_addr)] {
            let st = Command::new("ip").args(["-n", ns, "route", op, "blackhole", &format!("{other}/32")]).status().unwrap();
            assert!(st.success(), "ip route {op} blackhole {other} in {ns}");
        }
    };
    link("down");
    let out = mig.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in doubt"), "lpm migrate: {err}");
    let id = migration_id(&lab);
    let rows = migrations(&lab);
    assert_eq!(rows[0]["state"], serde_json::json!("in doubt"), "{rows:?}");
    assert_eq!(rows[0]["phase"], serde_json::json!("HandingOver/Restored"), "{rows:?}");
    let out = lab.ok(&["migration", "recover", &id]);
    assert!(out.contains("completed"), "recover: {out}");
    link("up");
    let row = settled(&lab, Duration::from_secs(20));
    assert_eq!(row["state"], serde_json::json!("completed"), "{row}");
    assert_eq!(where_it_runs(&lab), "h2");
    assert!(lab.kv_verify(&ip).starts_with("verify ok"));
    lab.client_alive(c);
    lab.finish_kv_client(c);
}

/// A partition that keeps writing (60 MiB/s) takes more than one round;
/// stopped while the source holds after its second round's barrier (and,
/// with Ctrl-C, likewise), it runs on at h1 with every page right.
#[test]
fn stop_at_the_second_round_of_a_busy_partition() {
    for (i, how) in [Stopper::Command, Stopper::CtrlC].into_iter().enumerate() {
        let lab = TestLab::up_with(
            &format!("hsr{i}"),
            2,
            &[("LPM_FAULT", "h1:source.round=sleep=1500+after=1"), ("LPM_MOVER_TIMEOUT_MS", MOVER_TIMEOUT_MS)],
        );
        let bin = lab.vol.join("dirtier");
        let cc = Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&bin)
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/bench/dirtier.c"))
            .output()
            .unwrap();
        assert!(cc.status.success(), "gcc dirtier.c: {}", String::from_utf8_lossy(&cc.stderr));
        let (vol, bin) = (lab.vol.to_string_lossy().into_owned(), bin.to_string_lossy().into_owned());
        lab.ok(&["partition", "create", "dm", "--host", "h1", "--memory", "256M", "--volume", &vol, "--", &bin, "64", "60"]);
        lab.wait_log("dm", "ready", Duration::from_secs(30));
        let args = ["migrate", "dm", "--to", "h2", "--max-downtime", "5", "--max-time", "30", "--yes"];
        let mig = lab.cmd(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        // The second hit of the point: the end of round 2.
        lab.wait_for_log("h1", "hit=2", Duration::from_secs(30));
        let id = migration_id(&lab);
        match how {
            Stopper::Command => {
                lab.ok(&["migration", "stop", &id]);
            }
            Stopper::CtrlC => {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(mig.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
            }
        }
        let out = mig.wait_with_output().unwrap();
        assert!(String::from_utf8_lossy(&out.stderr).contains("stopped by request"), "{}", String::from_utf8_lossy(&out.stderr));
        let row = settled(&lab, Duration::from_secs(20));
        assert_eq!(row["state"], serde_json::json!("stopped"), "{row}");
        let rounds = row["source_record"]["figures"]["round"].as_u64().unwrap_or(0);
        assert!(rounds >= 2, "stopped after {rounds} rounds: {row}");
        let on_h1 = lab.partitions_on("h1");
        let dm =
            on_h1.iter().find(|p| p.spec.name == "dm" && p.state == "running").unwrap_or_else(|| panic!("dm not running on h1: {on_h1:?}"));
        lab.wait_clean("h2", Duration::from_secs(15));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(dm.pid.unwrap()), nix::sys::signal::Signal::SIGUSR1).unwrap();
        lab.wait_log("dm", "verify 1 ", Duration::from_secs(30));
        let log = lab.logs("dm");
        let verdict = log.lines().rfind(|l| l.starts_with("verify 1 ")).unwrap_or_default();
        assert!(verdict.starts_with("verify 1 OK"), "{how:?}: dm's memory after the stop at round 2: {verdict}");
    }
}

/// The target's restore gets a field wrong (a test's sabotage): its
/// read-back check refuses the copy before "restored", so the migration
/// rolls back, naming the field, and the partition serves on at h1.
#[test]
fn a_copy_that_differs_from_its_image_never_runs() {
    let mut lab = TestLab::up_with("hver", 2, &[(lpm_engine::SABOTAGE_ENV, "umask"), ("LPM_MOVER_TIMEOUT_MS", MOVER_TIMEOUT_MS)]);
    let (c, ip) = kv(&mut lab);
    let err = lab.fails(&["migrate", "kv", "--to", "h2"]);
    assert!(err.contains("the restored tree differs from its image") && err.contains("Umask"), "{err}");
    let row = settled(&lab, Duration::from_secs(20));
    assert_eq!(row["state"], serde_json::json!("rolled back"), "{row}");
    assert_eq!(where_it_runs(&lab), "h1");
    assert!(lab.kv_verify(&ip).starts_with("verify ok"));
    lab.client_alive(c);
    lab.finish_kv_client(c);
}

/// lpmd going away leaves its partitions running: SIGTERM (a restart, an
/// upgrade) and SIGKILL (a crash) alike. The next lpmd lists each again
/// with the same init, the client's connection is never broken, and `lpm
/// partition stop` is what stops it. While a host's lpmd is down, `lpm
/// partition list` names it unreachable and lists the others' partitions
/// (and exits non-zero: the list is not whole).
#[test]
fn partitions_outlive_their_lpmd() {
    let mut lab = TestLab::up("hout", 2);
    let (c, ip) = kv(&mut lab);
    let init = lab.pid_of("kv");
    // One host down: the others still answer, and it is named.
    let h2 = lab.lpmd_pid("h2").expect("h2's lpmd pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(h2), nix::sys::signal::Signal::SIGKILL).unwrap();
    let out = lab.lpm(&["partition", "list"]);
    let (list, err) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success() && err.contains("h2"), "a list without h2 fails, naming it: {err}");
    let rows: Vec<Vec<&str>> = list.lines().map(|l| l.split_whitespace().collect()).collect();
    assert!(rows.iter().any(|r| r[..3] == ["kv", "h1", "running"]), "h1's kv is not listed with h2 down:\n{list}");
    assert!(rows.iter().any(|r| r[..3] == ["-", "h2", "unreachable"]), "h2 is not listed as unreachable:\n{list}");
    assert_eq!(lab.pid_of("kv"), init);
    lab.lab().restart("h2").expect("restart h2's lpmd");
    for sig in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGKILL] {
        let lpmd = lab.lpmd_pid("h1").expect("h1's lpmd pid");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(lpmd), sig).unwrap();
        let t = Instant::now();
        while std::path::Path::new(&format!("/proc/{lpmd}/cwd")).exists() {
            assert!(t.elapsed() < Duration::from_secs(20), "h1's lpmd survived {sig}:\n{}", lab.log_of("h1"));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(std::path::Path::new(&format!("/proc/{init}/cwd")).exists(), "kv's init {init} ended with lpmd ({sig})");
        lab.client_alive(c);
        lab.lab().restart("h1").unwrap_or_else(|e| panic!("restart h1's lpmd after {sig}: {e}"));
        let on = lab.partitions_on("h1");
        assert!(
            on.iter().any(|p| p.spec.name == "kv" && p.state == "running" && p.pid == Some(init)),
            "after {sig}, the new lpmd does not list kv as running with init {init}: {on:?}\n{}",
            lab.log_of("h1")
        );
        lab.client_alive(c);
    }
    let verdict = lab.kv_verify(&ip);
    assert!(verdict.starts_with("verify ok"), "kv's memory after two restarts of its lpmd: {verdict}");
    lab.finish_kv_client(c);
    lab.ok(&["partition", "stop", "kv"]);
    assert_eq!(lab.state_of("kv"), "stopped");
    let t = Instant::now();
    while std::path::Path::new(&format!("/proc/{init}/cwd")).exists() {
        assert!(t.elapsed() < Duration::from_secs(20), "kv's init {init} runs on after lpm partition stop");
        std::thread::sleep(Duration::from_millis(10));
    }
}
