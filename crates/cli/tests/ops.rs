//! The operator's commands of the CLI itself: `--version` with the commit,
//! shell completions, the manual pages.

use std::process::{Command, Output, Stdio};

mod common;
use common::LPM;

fn lpm(args: &[&str]) -> Output {
    let out = Command::new(LPM).args(args).stdin(Stdio::null()).output().expect("run lpm");
    assert!(out.status.success(), "lpm {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn text(args: &[&str]) -> String {
    String::from_utf8(lpm(args).stdout).expect("utf-8 output")
}

/// The commit HEAD is at, when the tests run from a git checkout of lpm.
fn head_commit() -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "--short=9", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn version_names_the_crate_version_and_the_commit() {
    let v = text(&["--version"]);
    assert!(v.starts_with(&format!("lpm {}", env!("CARGO_PKG_VERSION"))), "{v}");
    // From a tarball the version is the crate's alone; from a checkout it
    // carries the commit the binary was built from.
    if let Some(commit) = head_commit() {
        assert!(v.trim_end().ends_with(&format!("({commit})")), "{v} (HEAD is {commit})");
    }
}

#[test]
fn completions_for_each_shell_know_the_commands() {
    let bash = text(&["completions", "bash"]);
    assert!(bash.contains("partition") && bash.contains("migrate"), "{bash}");
    // bash takes the script and registers the completion of lpm.
    let none = Command::new("bash")
        .args(["-c", "source /dev/stdin && complete -p lpm"])
        .stdin(Stdio::from(std::fs::File::open("/dev/null").unwrap()))
        .output()
        .unwrap();
    assert!(!none.status.success(), "no script given, bash must know no completion for lpm");
    let mut child = Command::new("bash")
        .args(["-c", "source /dev/stdin && complete -p lpm"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), bash.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("lpm"), "{out:?}");
    assert!(text(&["completions", "zsh"]).starts_with("#compdef lpm"));
    assert!(text(&["completions", "fish"]).contains("complete -c lpm"));
    let bad = Command::new(LPM).args(["completions", "tcsh"]).output().unwrap();
    assert!(!bad.status.success());
}

#[test]
fn manual_pages_cover_the_commands() {
    let page = text(&["man"]);
    assert!(page.contains(".TH lpm 1") && page.contains("partition"), "{page}");
    let dir = std::env::temp_dir().join(format!("lpm-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    lpm(&["man", "--dir", dir.to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    pages.sort();
    std::fs::remove_dir_all(&dir).unwrap();
    for want in ["lpm.1", "lpm-partition.1", "lpm-partition-list.1", "lpm-migrate.1", "lpm-check.1"] {
        assert!(pages.iter().any(|p| p == want), "{want} missing from {pages:?}");
    }
    // Hidden commands (the agent, the fill) are no operator's to read about.
    assert!(!pages.iter().any(|p| p.contains("daemon") || p.contains("fill")), "{pages:?}");
}

#[test]
fn check_prints_a_table_and_json() {
    let out = Command::new(LPM).arg("check").output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let first: Vec<&str> = table.lines().next().unwrap_or_default().split_whitespace().collect();
    assert_eq!(first, ["RESULT", "FEATURE", "DETAIL"], "{table}");
    assert!(table.lines().any(|l| l.split_whitespace().take(2).eq(["SUPPORT", "KIND"])), "{table}");
    let out = Command::new(LPM).args(["check", "--json"]).output().unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("lpm check --json is JSON");
    let features = j["features"].as_array().expect("features");
    assert!(features.iter().all(|f| f["name"].is_string() && f["ok"].is_boolean() && f["detail"].is_string()), "{j}");
    let kinds = j["kinds"].as_array().expect("kinds");
    assert!(kinds.iter().any(|k| k["support"] == "refused") && kinds.iter().any(|k| k["support"] == "supported"), "{j}");
    // The exit status says what the list of missing features says.
    let missing = j["missing"].as_array().expect("missing");
    assert_eq!(out.status.success(), missing.is_empty(), "{j}");
    assert_eq!(missing.len(), features.iter().filter(|f| f["ok"] == false).count());
}
