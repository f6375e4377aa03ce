//! `lpm migration ...`: the migrations the hosts record (PowerVM's
//! lslparmigr and migrlpar -o s / -o r). Each host keeps a record of every
//! migration it took part in; the CLI asks every host and puts the two
//! sides of each migration together.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use clap::Subcommand;
use lpm_agent::api::{MigrationInfo, Request, Response};
use lpm_migrate::handover::{PeerState, SourceState, TargetState};
use lpm_migrate::journal::Side;

use crate::cluster::Cluster;

/// `lpm migration ...`
#[derive(Subcommand)]
pub enum MigrationCmd {
    /// Migrations as the hosts record them: the unfinished ones, or all.
    List {
        /// Only those this host takes part in.
        #[arg(long)]
        host: Option<String>,
        /// Finished ones too.
        #[arg(long)]
        all: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// One migration: both hosts' records, live progress, the report.
    Show {
        /// The migration's id.
        id: String,
        /// Print its progress until it ends.
        #[arg(long)]
        follow: bool,
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop a migration: before go the partition keeps running on its
    /// source and the target's copy goes; after go it is too late.
    Stop {
        /// The migration's id.
        id: String,
    },
    /// Finish or roll back a migration in doubt from both hosts' records
    /// (what each host does by itself once it can reach the other).
    Recover {
        /// The migration's id.
        id: String,
    },
}

/// Both sides of one migration, as far as the hosts answered.
#[derive(Debug, Default)]
pub struct Both {
    /// The migration's id.
    pub id: String,
    /// The source's record.
    pub source: Option<MigrationInfo>,
    /// The target's record.
    pub target: Option<MigrationInfo>,
}

impl Both {
    fn any(&self) -> &MigrationInfo {
        self.source.as_ref().or(self.target.as_ref()).expect("one side at least")
    }

    fn source_state(&self) -> Option<SourceState> {
        match self.source.as_ref()?.record.side {
            Side::Source(s) => Some(s),
            Side::Target(_) => None,
        }
    }

    fn target_state(&self) -> Option<TargetState> {
        match self.target.as_ref()?.record.side {
            Side::Target(t) => Some(t),
            Side::Source(_) => None,
        }
    }

    /// What happened, in a word or two.
    pub fn state(&self) -> String {
        match (self.source_state(), self.target_state()) {
            (Some(SourceState::Completed), _) | (None, Some(TargetState::Running)) => "completed".into(),
            (Some(SourceState::RolledBack), _) => {
                let cause = self.source.as_ref().and_then(|s| s.record.ending.as_ref()).map(|e| e.cause.as_str()).unwrap_or("");
                if cause.contains("stopped by request") {
                    "stopped".into()
                } else if cause.contains("validation failed") {
                    "refused".into()
                } else {
                    "rolled back".into()
                }
            }
            (Some(SourceState::HandingOver), _) if self.source.as_ref().is_some_and(|s| s.live.is_none()) => "in doubt".into(),
            (Some(SourceState::HandingOver), _) => "handing over".into(),
            (Some(_), _) => "migrating".into(),
            (None, Some(TargetState::RolledBack)) => "rolled back".into(),
            (None, _) => "unknown source".into(),
        }
    }

    /// Both machines' states.
    pub fn phase(&self) -> String {
        let s = self.source.as_ref().map(|i| label(i.record.side, &i.record.history)).unwrap_or_else(|| "-".into());
        let t = self.target.as_ref().map(|i| label(i.record.side, &i.record.history)).unwrap_or_else(|| "-".into());
        format!("{s}/{t}")
    }

    fn progress(&self) -> String {
        let Some(s) = &self.source else { return "-".into() };
        let f = &s.record.figures;
        let (round, sent, dirty) = match &s.live {
            Some(p) if p.round > 0 => (p.round, p.sent_bytes, p.dirty_pages),
            _ => (f.round, f.sent_bytes, f.dirty_pages),
        };
        if round == 0 {
            return "-".into();
        }
        format!("round {round}, {:.1} MiB, {dirty} dirty", sent as f64 / (1 << 20) as f64)
    }

    fn downtime(&self) -> String {
        match self.source.as_ref().and_then(|s| s.report.as_ref()) {
            Some(r) if r.over_budget() => format!("{:.1} ms, over budget", r.downtime_ms),
            Some(r) if r.downtime_ms > 0.0 => format!("{:.1} ms", r.downtime_ms),
            _ => "-".into(),
        }
    }

    fn settled(&self) -> bool {
        let done = |i: &Option<MigrationInfo>| i.as_ref().is_none_or(|i| i.record.settled);
        done(&self.source) && done(&self.target)
    }
}

fn label(side: Side, history: &[lpm_migrate::journal::Visit]) -> String {
    match side {
        Side::Source(SourceState::PreCopy { .. }) => history.last().map(|v| v.state.clone()).unwrap_or_else(|| side.name().into()),
        s => s.name().into(),
    }
}

fn rfc3339(ms: u64) -> String {
    lpm_migrate::report::rfc3339(ms)
}

/// Every host's records, put together by migration. Hosts that do not
/// answer are named in the second half (the rest is still shown).
pub fn gather(c: &Cluster, only: Option<&str>, all: bool) -> (BTreeMap<String, Both>, Vec<String>) {
    let mut out: BTreeMap<String, Both> = BTreeMap::new();
    let mut down = Vec::new();
    for h in c.names() {
        if only.is_some_and(|o| o != h) {
            continue;
        }
        match c.client(&h).and_then(|mut cl| cl.call(&Request::Migrations { all })) {
            Ok(Response::Migrations(list)) => {
                for m in list {
                    let b = out.entry(m.record.id.clone()).or_insert_with(|| Both { id: m.record.id.clone(), ..Default::default() });
                    match m.record.side {
                        Side::Source(_) => b.source = Some(m),
                        Side::Target(_) => b.target = Some(m),
                    }
                }
            }
            Ok(other) => down.push(format!("{h}: unexpected answer {other:?}")),
            Err(e) => down.push(format!("{e:#}")),
        }
    }
    // A side listed by one host only (the other settled it): fetch it, so
    // both halves show.
    for b in out.values_mut() {
        let (want, host) = match (&b.source, &b.target) {
            (Some(s), None) => (false, s.record.target.clone()),
            (None, Some(t)) => (true, t.record.source.clone()),
            _ => continue,
        };
        if let Ok(Response::Migration(m)) = c.client(&host).and_then(|mut cl| cl.call(&Request::Migration(b.id.clone()))) {
            if want {
                b.source = Some(*m);
            } else {
                b.target = Some(*m);
            }
        }
    }
    (out, down)
}

/// One migration, from every host that records it.
pub fn find(c: &Cluster, id: &str) -> Result<(Both, Vec<String>)> {
    let mut b = Both { id: id.to_string(), ..Default::default() };
    let mut down = Vec::new();
    for h in c.names() {
        match c.client(&h).and_then(|mut cl| cl.call(&Request::Migration(id.to_string()))) {
            Ok(Response::Migration(m)) => match m.record.side {
                Side::Source(_) => b.source = Some(*m),
                Side::Target(_) => b.target = Some(*m),
            },
            Ok(_) => {}
            Err(e) if format!("{e:#}").contains("no migration") => {}
            Err(e) => down.push(format!("{e:#}")),
        }
    }
    if b.source.is_none() && b.target.is_none() {
        if down.is_empty() {
            bail!("no host records migration {id}");
        }
        bail!("no host that answered records migration {id} ({})", down.join("; "));
    }
    Ok((b, down))
}

fn warn_down(down: &[String]) {
    for d in down {
        eprintln!("lpm: a host did not answer: {d}");
    }
}

/// Runs `lpm migration ...`.
pub fn run(cmd: MigrationCmd) -> Result<ExitCode> {
    let c = Cluster::open()?;
    match cmd {
        MigrationCmd::List { host, all, json } => {
            if let Some(h) = &host {
                if !c.names().contains(h) {
                    bail!("no host {h:?} (hosts: {})", c.names().join(", "));
                }
            }
            let (found, down) = gather(&c, host.as_deref(), all);
            warn_down(&down);
            if json {
                let rows: Vec<serde_json::Value> = found.values().map(row_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:10} {:16} {:5} {:5} {:13} {:24} {:28} {:24} DOWNTIME",
                    "ID", "PARTITION", "FROM", "TO", "STATE", "PHASE", "PROGRESS", "STARTED"
                );
                for b in found.values() {
                    let r = &b.any().record;
                    println!(
                        "{:10} {:16} {:5} {:5} {:13} {:24} {:28} {:24} {}",
                        b.id,
                        r.partition,
                        r.source,
                        r.target,
                        b.state(),
                        b.phase(),
                        b.progress(),
                        rfc3339(r.started_unix_ms),
                        b.downtime()
                    );
                }
            }
            Ok(if down.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        MigrationCmd::Show { id, follow, json } => {
            let (mut b, down) = find(&c, &id)?;
            warn_down(&down);
            if follow {
                let mut last = String::new();
                let t = Instant::now();
                while !b.settled() {
                    let line = format!("{}  {}  {}", b.state(), b.phase(), b.progress());
                    if line != last {
                        eprintln!("[{:6.1} s] {line}", t.elapsed().as_secs_f64());
                        last = line;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    b = find(&c, &id)?.0;
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&row_json(&b))?);
            } else {
                print!("{}", render(&b));
            }
            Ok(ExitCode::SUCCESS)
        }
        MigrationCmd::Stop { id } => {
            let (b, down) = find(&c, &id)?;
            let src = b
                .source
                .as_ref()
                .map(|s| s.host.clone())
                .ok_or_else(|| anyhow!("the source of migration {id} does not answer ({})", down.join("; ")))?;
            match c.client(&src)?.call(&Request::MigrationStop(id.clone()))? {
                Response::Migration(m) => {
                    println!("migration {id} stopped: partition {} runs on {}", m.record.partition, m.record.source);
                    Ok(ExitCode::SUCCESS)
                }
                other => bail!("unexpected answer {other:?}"),
            }
        }
        MigrationCmd::Recover { id } => recover(&c, &id),
    }
}

/// `lpm migration recover`: relays each host's recorded state to the
/// other until both records are final (what the hosts' own resolvers do
/// when they reach each other; this goes through the control sockets).
fn recover(c: &Cluster, id: &str) -> Result<ExitCode> {
    let (mut b, _) = find(c, id)?;
    let status = |i: &MigrationInfo| match i.record.side {
        Side::Source(state) => PeerState::Source { state },
        Side::Target(state) => PeerState::Target { state },
    };
    let t = Instant::now();
    loop {
        let final_ = |i: &Option<MigrationInfo>| i.as_ref().is_none_or(|i| i.record.side.is_final());
        if final_(&b.source) && final_(&b.target) {
            break;
        }
        let (Some(s), Some(tg)) = (&b.source, &b.target) else {
            let (missing, host) = match (&b.source, &b.target) {
                (None, Some(t)) => ("source", t.record.source.clone()),
                (Some(s), _) => ("target", s.record.target.clone()),
                _ => unreachable!("one side at least"),
            };
            bail!(
                "the {missing} of migration {id}, {host}, does not answer or has no record of it: the other side keeps its copy as it is ({}); run recover again once {host} is back",
                b.phase()
            );
        };
        let (sh, th) = (s.host.clone(), tg.host.clone());
        let (ss, ts) = (status(s), status(tg));
        c.client(&th)?.call(&Request::Resolve { id: id.to_string(), peer: ss })?;
        c.client(&sh)?.call(&Request::Resolve { id: id.to_string(), peer: ts })?;
        let (next, _) = find(c, id)?;
        if t.elapsed() > Duration::from_secs(60) {
            bail!("migration {id} did not settle in 60 s: {}", next.phase());
        }
        if next.phase() == b.phase() {
            // Actions run after the records (a destroy, a run): wait for them.
            std::thread::sleep(Duration::from_millis(100));
        }
        b = next;
    }
    println!("migration {id}: {} ({})", b.state(), b.phase());
    Ok(ExitCode::SUCCESS)
}

fn row_json(b: &Both) -> serde_json::Value {
    let r = &b.any().record;
    serde_json::json!({
        "id": b.id,
        "partition": r.partition,
        "source": r.source,
        "target": r.target,
        "state": b.state(),
        "phase": b.phase(),
        "started_unix_ms": r.started_unix_ms,
        "downtime_ms": b.source.as_ref().and_then(|s| s.report.as_ref()).map(|r| r.downtime_ms),
        "over_budget": b.source.as_ref().and_then(|s| s.report.as_ref()).map(|r| r.over_budget()),
        "source_record": b.source.as_ref().map(|s| &s.record),
        "target_record": b.target.as_ref().map(|t| &t.record),
        "progress": b.source.as_ref().and_then(|s| s.live.as_ref()),
        "report": b.source.as_ref().and_then(|s| s.report.as_ref()),
    })
}

fn render(b: &Both) -> String {
    use std::fmt::Write as _;
    let r = &b.any().record;
    let mut s = String::new();
    let _ = writeln!(s, "migration {} of partition {}: {} -> {}", b.id, r.partition, r.source, r.target);
    let _ = writeln!(s, "state       {} ({})", b.state(), b.phase());
    let _ = writeln!(s, "started     {}", rfc3339(r.started_unix_ms));
    let _ = writeln!(s, "progress    {}", b.progress());
    for (side, info) in [("source", &b.source), ("target", &b.target)] {
        match info {
            Some(i) => {
                let hist: Vec<String> =
                    i.record.history.iter().map(|v| format!("{} +{} ms", v.state, v.unix_ms.saturating_sub(r.started_unix_ms))).collect();
                let _ = writeln!(s, "{side:11} {}: {}{}", i.host, hist.join(", "), if i.record.settled { " (settled)" } else { "" });
                if let Some(e) = &i.record.ending {
                    let _ = writeln!(s, "{:11} ended in {}: {}", "", e.step, e.cause);
                }
            }
            None => {
                let _ = writeln!(s, "{side:11} no record (the host did not answer, or never heard of it)");
            }
        }
    }
    if let Some(rep) = b.source.as_ref().and_then(|s| s.report.as_ref()) {
        let _ = writeln!(s);
        s.push_str(&lpm_migrate::report::render(rep));
    }
    s
}
