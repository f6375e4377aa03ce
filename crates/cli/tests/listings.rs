//! The listings of a lab as a person and as a script read them: tables
//! with a header row, `--json` parsed, why a partition stopped, and its
//! console log with `--tail` and `--follow` (also across a migration).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;
use common::lab::TestLab;

fn sh(script: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), script.into()]
}

fn json(lab: &TestLab, args: &[&str]) -> serde_json::Value {
    let out = lab.ok(args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("lpm {} is not JSON ({e}): {out}", args.join(" ")))
}

/// Waits until `f` holds, failing after `secs` with `what`.
fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `lpm partition logs ... --follow` running, its lines coming through a
/// channel; killed if the test ends first.
struct Follower {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Follower {
    fn start(lab: &TestLab, args: &[&str]) -> Follower {
        let mut child = lab.cmd(args).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("run lpm partition logs");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    /// The next line, within `secs`.
    fn next(&self, secs: u64) -> String {
        self.lines.recv_timeout(Duration::from_secs(secs)).expect("the follower printed no more lines")
    }

    /// Reads lines until one equals `want`, within `secs`.
    fn until(&self, want: &str, secs: u64) {
        let t = Instant::now();
        loop {
            let left = Duration::from_secs(secs).saturating_sub(t.elapsed());
            match self.lines.recv_timeout(left) {
                Ok(l) if l == want => return,
                Ok(_) => {}
                Err(e) => panic!("the follower never printed {want:?}: {e}"),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `line N` number of a line the talker wrote.
fn number(line: &str) -> u64 {
    line.strip_prefix("line ").and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("not a talker's line: {line:?}"))
}

#[test]
fn listings_tables_json_exit_reasons_and_logs() {
    let lab = TestLab::up("list", 2);
    // One that talks until stopped (exiting 7 on SIGTERM), one that says
    // three lines and exits 3.
    let talker = "trap 'echo bye; exit 7' TERM; i=0; while :; do i=$((i+1)); echo line $i; sleep 0.05; done";
    lab.create("talk", "h1", None, &sh(talker)).unwrap();
    lab.create("brief", "h2", None, &sh("echo one; echo two; echo three; exit 3")).unwrap();

    // Tables: a header row, then rows whose first fields are name, host
    // and state.
    wait_until("brief to end", 30, || lab.state_of("brief") == "stopped");
    let list = lab.ok(&["partition", "list"]);
    let rows: Vec<Vec<&str>> = list.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["NAME", "HOST", "STATE", "ADDRESS", "MEMORY", "COMMAND"], "{list}");
    assert!(rows.iter().any(|r| r[..3] == ["talk", "h1", "running"]), "{list}");
    assert!(list.lines().any(|l| l.starts_with("brief") && l.contains("stopped (exited with status 3)")), "{list}");

    // JSON: the same partitions, the exit recorded.
    let j = json(&lab, &["partition", "list", "--json"]);
    let parts = j["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 2, "{j}");
    assert_eq!(j["unreachable"], serde_json::json!([]));
    let brief = parts.iter().find(|p| p["spec"]["name"] == "brief").expect("brief listed");
    assert_eq!(brief["exit"]["code"], 3, "{brief}");
    assert_eq!(brief["exit"]["by_stop"], false, "{brief}");
    let talk = parts.iter().find(|p| p["spec"]["name"] == "talk").expect("talk listed");
    assert_eq!(talk["state"], "running");
    assert!(talk["exit"].is_null(), "a running partition has no exit: {talk}");
    assert_eq!(lab.show("brief")["exit"]["code"], 3);

    let status = json(&lab, &["lab", "status", "--json"]);
    let hosts: Vec<(&str, bool)> =
        status.as_array().unwrap().iter().map(|h| (h["host"].as_str().unwrap(), h["up"].as_bool().unwrap())).collect();
    assert_eq!(hosts, [("h1", true), ("h2", true)]);
    assert!(lab.ok(&["lab", "status"]).starts_with("HOST"));

    let checks = json(&lab, &["migrate", "talk", "--to", "h2", "--validate-only", "--json"]);
    let checks = checks.as_array().expect("a list of checks");
    assert!(!checks.is_empty() && checks.iter().all(|c| c["ok"] == true && c["name"].is_string()), "{checks:?}");
    assert!(lab.ok(&["migrate", "talk", "--to", "h2", "--validate-only"]).starts_with("RESULT"));

    // Logs: the last lines; following a stopped partition prints all and
    // ends.
    assert_eq!(lab.ok(&["partition", "logs", "brief", "--tail", "2"]), "two\nthree\n");
    assert_eq!(lab.ok(&["partition", "logs", "brief", "--tail", "0"]), "");
    assert_eq!(lab.ok(&["partition", "logs", "brief", "--follow"]), "one\ntwo\nthree\n");

    // Following the talker: the lines go on, also after it moved to h2
    // (the follower finds it there), and it ends with the partition.
    let f = Follower::start(&lab, &["partition", "logs", "talk", "--follow", "--tail", "1"]);
    let first = number(&f.next(30));
    let later = number(&f.next(30));
    assert_eq!(later, first + 1, "lines come in order, none skipped");
    match lab.migrate("talk", "h2") {
        common::lab::Moved::Completed(_) => {}
        common::lab::Moved::Failed(e) => panic!("migrate talk to h2: {e}"),
    }
    assert_eq!(lab.host_of("talk"), "h2");
    // Lines written on h2, after the move, reach the follower in order.
    let mut last = later;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        let n = number(&f.next(30));
        assert_eq!(n, last + 1, "lines come in order, none skipped, across the move");
        last = n;
    }
    lab.ok(&["partition", "stop", "talk"]);
    f.until("bye", 30);
    let mut f = f;
    let st = f.child.wait().unwrap();
    assert!(st.success(), "the follower ends with the partition: {st}");
    let show = lab.show("talk");
    assert_eq!(show["exit"]["code"], 7, "{show}");
    assert_eq!(show["exit"]["by_stop"], true, "{show}");
    let list = lab.ok(&["partition", "list"]);
    assert!(list.lines().any(|l| l.starts_with("talk") && l.contains("stopped (stopped by lpm: exited with status 7)")), "{list}");

    // Started again, it has no exit any more.
    lab.ok(&["partition", "start", "talk"]);
    let show = lab.show("talk");
    assert!(show["state"] == "running" && show["exit"].is_null(), "{show}");
}
