//! The policies through the console: `lpm host evacuate NAME`, `lpm host
//! release NAME`, `lpm balance`, `lpm consolidate` (docs/console.md, "The
//! policies carried out"). A plan needs the whole inventory and a record
//! of its run, so these go through the console only.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use lpm_console::client::{seg, ConsoleClient};
use lpm_console::run::{Outcome, Run, RunState};
use serde_json::{json, Value};

/// How often the CLI reads a run's record while it goes: each read is
/// one small GET to the console, and a move takes a second or more.
const FOLLOW_EVERY: Duration = Duration::from_millis(250);

/// `--dry-run` and `--json` of the policy commands.
#[derive(Args, Debug)]
pub struct PolicyArgs {
    /// Print the plan (which partition goes where, and why; what stays and
    /// why) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON: the plan with --dry-run, else the run's record at its
    /// end.
    #[arg(long)]
    pub json: bool,
}

/// `lpm host evacuate NAME`.
pub fn evacuate(name: &str, a: PolicyArgs) -> Result<ExitCode> {
    policy(&format!("/v1/hosts/{}/evacuate", seg(name)), &format!("evacuate {name}"), a)
}

/// `lpm host release NAME`.
pub fn release(name: &str) -> Result<ExitCode> {
    let c = client("lpm host release")?;
    let _: Value =
        c.call("POST", &format!("/v1/hosts/{}/release", seg(name)), Some(&json!({}))).with_context(|| format!("release host {name}"))?;
    println!("{name}: out of maintenance");
    Ok(ExitCode::SUCCESS)
}

/// `lpm balance`.
pub fn balance(a: PolicyArgs) -> Result<ExitCode> {
    policy("/v1/balance", "balance", a)
}

/// `lpm consolidate`.
pub fn consolidate(a: PolicyArgs) -> Result<ExitCode> {
    policy("/v1/consolidate", "consolidate", a)
}

fn client(what: &str) -> Result<ConsoleClient> {
    let path = crate::hosts::path(None)?;
    let file = lpm_host::hosts::HostsFile::load(&path)?;
    crate::console::configured(&file, &path)?.with_context(|| {
        format!(
            "{what}: no console is configured in {} nor in LPM_CONSOLE (a plan needs the console's inventory and keeps its record there: `lpm console use ADDR`)",
            path.display()
        )
    })
}

fn policy(path: &str, what: &str, a: PolicyArgs) -> Result<ExitCode> {
    let c = client(&format!("lpm {what}"))?;
    let answer: Value = c.call("POST", path, Some(&json!({ "dry_run": a.dry_run }))).with_context(|| format!("{what}: plan"))?;
    if a.dry_run {
        if a.json {
            println!("{}", serde_json::to_string_pretty(&answer)?);
        } else {
            print!("{}", answer["text"].as_str().unwrap_or_default());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let id = answer["id"].as_str().context("the console's answer names no plan id")?.to_string();
    if !a.json {
        println!("{id}: {}", answer["text"].as_str().unwrap_or_default().trim_end());
    }
    let run = follow(&c, &id, !a.json)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&run)?);
    } else {
        print_summary(&run);
    }
    let sum = run.summary.as_ref();
    Ok(if sum.is_some_and(|s| s.failed.is_empty() && s.skipped.is_empty()) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Reads the run's record until it has ended, printing each move as it
/// starts and ends.
fn follow(c: &ConsoleClient, id: &str, print: bool) -> Result<Run> {
    let mut told: BTreeMap<usize, Outcome> = BTreeMap::new();
    loop {
        let run: Run = c.call("GET", &format!("/v1/plans/{}", seg(id)), None).with_context(|| format!("read plan {id}"))?;
        if print {
            for (i, m) in run.moves.iter().enumerate() {
                if m.outcome == Outcome::Waiting || told.get(&i) == Some(&m.outcome) {
                    continue;
                }
                let p = &m.planned;
                match &m.outcome {
                    Outcome::Running => println!("  wave {}: {} {} -> {} started", m.wave, p.partition, p.from, p.to),
                    Outcome::Moved { migration } => println!("  wave {}: {} moved to {} ({migration})", m.wave, p.partition, p.to),
                    Outcome::Failed { reason, .. } => println!("  wave {}: {} FAILED: {reason}", m.wave, p.partition),
                    Outcome::Skipped { reason } => println!("  wave {}: {} skipped: {reason}", m.wave, p.partition),
                    Outcome::Waiting => {}
                }
                told.insert(i, m.outcome.clone());
            }
        }
        if run.state != RunState::Running {
            return Ok(run);
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

fn print_summary(run: &Run) {
    let Some(s) = &run.summary else {
        println!("{}: {} ended without a summary ({:?})", run.id, run.what(), run.state);
        return;
    };
    println!(
        "{}: {}: {} moved, {} failed, {} skipped, {} not movable",
        run.id,
        run.what(),
        s.moved.len(),
        s.failed.len(),
        s.skipped.len(),
        s.not_movable.len()
    );
    for (what, list) in [("failed", &s.failed), ("skipped", &s.skipped), ("not movable", &s.not_movable)] {
        for n in list {
            println!("  {what}: {}: {}", n.partition, n.reason);
        }
    }
    if !s.hosts_freed.is_empty() {
        println!("hosts freed: {}", s.hosts_freed.join(", "));
    }
    if !s.maintenance.is_empty() {
        println!("in maintenance: {}", s.maintenance.join(", "));
    }
    if !s.power_off.is_empty() {
        println!("can be powered off: {}", s.power_off.join(", "));
    }
}
