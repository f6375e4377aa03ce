//! `lpm bench clients` with tiny settings: one client on a held
//! connection and one opening a connection per request, an echo server
//! holding 8 MiB, two migrations there and back. It must complete with
//! every answer checked and the server's memory intact; its figures are
//! not judged here (the machine is shared), only that they are there.

use std::process::{Command, Stdio};

mod common;
use common::LPM;

#[test]
fn bench_clients_runs_two_migrations_with_every_answer_checked() {
    let out = Command::new(LPM)
        .args(["bench", "clients", "--server", "tcp", "--clients", "1", "--migrations", "2", "--mib", "8", "--rate", "5", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("run lpm bench clients");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "lpm bench clients failed:\n{stderr}\n{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"));
    assert_eq!(v["server"], "tcp");
    assert_eq!(v["errors"], 0, "{v:#}");
    let moves = v["migrations"].as_array().expect("migrations");
    assert_eq!(moves.len(), 2, "{v:#}");
    for (m, (from, to)) in moves.iter().zip([("h1", "h2"), ("h2", "h1")]) {
        assert_eq!((m["from"].as_str(), m["to"].as_str()), (Some(from), Some(to)), "{m:#}");
        assert_eq!(m["report"]["outcome"]["result"], "completed", "{m:#}");
        assert!(m["downtime_ms"].as_f64().is_some_and(|d| d > 0.0), "{m:#}");
        assert_eq!(m["clients_longest_wait_ms"].as_array().map(Vec::len), Some(1), "{m:#}");
        assert!(m["clients_longest_wait_ms"][0].as_f64().is_some_and(|w| w > 0.0), "{m:#}");
        assert!(m["new_connection_longest_wait_ms"].as_f64().is_some_and(|w| w > 0.0), "{m:#}");
        assert!(m["retransmissions"].as_u64().is_some(), "{m:#}");
    }
    // Both clients answered before the first move and after each: at
    // least 3 answers each time, every one checked.
    assert!(v["answers_checked"].as_u64().is_some_and(|n| n >= 2 * 3 * 3), "{v:#}");
    let checks: Vec<&str> = v["checks"].as_array().expect("checks").iter().filter_map(|c| c.as_str()).collect();
    assert!(checks.iter().any(|c| c.starts_with("memory: OK 2048 pages")), "{checks:?}");
    for k in ["downtime_ms_p50", "downtime_ms_p99", "longest_wait_ms_p50", "longest_wait_ms_p99", "new_connection_longest_wait_ms_p99"] {
        assert!(v["summary"][k].as_f64().is_some(), "summary {k}: {v:#}");
    }
    // The lab went away with the benchmark.
    assert!(!stderr.contains("lab down:"), "{stderr}");
}
