//! `lpm bench migrate`: live migration of partitions that dirty their
//! memory at a set rate, measured against the raw TCP bandwidth between the
//! same two hosts (issue 4).
//!
//! For each size × dirty rate the benchmark starts a fresh partition on h1
//! running `dirtier` (crates/cli/bench/dirtier.c, compiled with gcc at run
//! time), waits until it has written all its memory, measures a plain TCP
//! stream h1 → h2 over the management network (what the mover uses, with
//! the mover's 1 MiB writes), migrates the partition to h2, asks it to
//! check every page (SIGUSR1) and deletes it. The bound a migration is held
//! to is the time the bytes it sent take at the raw bandwidth.
//!
//! The benchmark brings up a lab of its own in a temporary directory and
//! tears it down however it ends: on error, on panic, and on SIGINT,
//! SIGTERM or SIGHUP (a thread waits for those, which the other threads
//! block).

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use lpm_agent::api::{MigrateRequest, PartitionInfo, Request, Response};
use lpm_agent::client::{read_key, Client};
use lpm_host::lab::{Lab, LabOptions};
use lpm_host::partition::PartitionSpec;
use lpm_migrate::report::{Outcome, Report};
use serde_json::{json, Value};

/// The partition program, compiled into the lab directory at run time.
const DIRTIER_C: &str = include_str!("../bench/dirtier.c");
/// The allowed downtime asked of every migration (and the downtime target).
const MAX_DOWNTIME_MS: u64 = 50;
/// Pre-copy time limit: at it the migration switches over anyway
/// (`--force`), and a migration that reaches it did not converge.
const MAX_TIME_S: u64 = 60;
/// The migration's round limit: a migration that reaches it did not
/// converge either.
fn max_rounds() -> usize {
    lpm_migrate::policy::Limits::default().max_rounds as usize
}

/// Target: total time at most this many times the raw-bandwidth bound.
const RATIO_TARGET: f64 = 1.3;
/// Dirty rates (MiB/s) the downtime target applies to.
const DOWNTIME_RATES: [u64; 2] = [0, 50];
/// The dirty rate (MiB/s) that must converge.
const CONVERGE_RATE: u64 = 200;
/// Bytes of the raw TCP stream (1 GiB, as many as the largest partition).
const RAW_BYTES: u64 = 1 << 30;
/// The size of every write and read of the raw stream, as the mover's
/// buffered writer and reader.
const RAW_CHUNK: usize = 1 << 20;
/// Memory limit of a partition beyond its dirtier's area (page tables,
/// libc, the generation table).
const MEMORY_SLACK: u64 = 128 << 20;
/// How long a partition may take to write its memory once.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the check of every page may take after a migration.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// `lpm bench migrate`
#[derive(Args, Debug, Clone)]
pub struct MigrateBench {
    /// Partition sizes in MiB.
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    pub sizes: Vec<u64>,
    /// Dirty rates in MiB/s.
    #[arg(long, value_delimiter = ',', default_value = "0,50,200")]
    pub rates: Vec<u64>,
    /// Repetitions of each size × rate (every run is a row).
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// Print the rows and the targets as JSON.
    #[arg(long)]
    pub json: bool,
    /// Run every case a second time with the hosts' movers in plain mode
    /// (`insecure`) and print what mutual TLS costs, side by side.
    #[arg(long)]
    pub compare_plain: bool,
}

/// One migration of the benchmark.
#[derive(Clone, Debug, Default)]
struct Row {
    size_mib: u64,
    rate_mib: u64,
    run: usize,
    /// "completed", or what went wrong.
    outcome: String,
    /// Raw TCP bandwidth h1 → h2 just before the migration, bytes/s.
    raw_bytes_per_s: f64,
    /// CPU time the raw stream took per GiB, sender and receiver, ms.
    raw_cpu_ms_per_gib: f64,
    /// CPU time the source's and the target's lpmd used while the
    /// migration ran (all their threads), ms.
    cpu_src_ms: f64,
    cpu_dst_ms: f64,
    /// What the memory check printed ("OK ..."), or why there is none.
    verified: String,
    report: Option<Report>,
}

impl Row {
    fn completed(&self) -> bool {
        self.report.as_ref().is_some_and(|r| r.outcome == Outcome::Completed)
    }

    fn verified_ok(&self) -> bool {
        self.verified.starts_with("OK")
    }

    fn total_ms(&self) -> f64 {
        self.report.as_ref().map_or(f64::NAN, |r| r.total_ms)
    }

    fn downtime_ms(&self) -> f64 {
        self.report.as_ref().map_or(f64::NAN, |r| r.downtime_ms)
    }

    fn rounds(&self) -> usize {
        self.report.as_ref().map_or(0, |r| r.rounds.len())
    }

    fn bytes_sent(&self) -> u64 {
        self.report.as_ref().map_or(0, |r| r.bytes_total)
    }

    fn max_throttle(&self) -> f64 {
        self.report.as_ref().map_or(0.0, |r| r.max_throttle)
    }

    /// The dirty rate pre-copy measured during its first round, MiB/s.
    fn measured_dirty_mib(&self) -> f64 {
        self.report.as_ref().and_then(|r| r.rounds.first()).map_or(f64::NAN, |r| r.dirty_mib_per_s)
    }

    /// The time the CPU the two lpmd used takes on this machine's CPUs,
    /// had it been spread over all of them all along, ms: no schedule of
    /// the same work finishes sooner.
    fn cpu_floor_ms(&self) -> f64 {
        (self.cpu_src_ms + self.cpu_dst_ms) / cpus()
    }

    /// CPU both lpmd used per GiB sent, ms.
    fn mover_cpu_ms_per_gib(&self) -> f64 {
        (self.cpu_src_ms + self.cpu_dst_ms) / (self.bytes_sent() as f64 / (1u64 << 30) as f64)
    }

    /// Total time less setup, rounds and downtime: the ends of the rounds
    /// (waiting for the target to store what is in flight), the start of
    /// tracking, what is read before the stop, ms.
    fn between_ms(&self) -> f64 {
        self.report
            .as_ref()
            .map_or(f64::NAN, |r| r.total_ms - r.setup_ms - r.rounds.iter().map(|x| x.duration_ms).sum::<f64>() - r.downtime_ms)
    }

    /// The time the bytes sent take at the raw bandwidth, ms.
    fn bound_ms(&self) -> f64 {
        if self.raw_bytes_per_s > 0.0 {
            self.bytes_sent() as f64 / self.raw_bytes_per_s * 1e3
        } else {
            f64::NAN
        }
    }

    fn ratio(&self) -> f64 {
        self.total_ms() / self.bound_ms()
    }

    /// Pre-copy ended because the rest fit the downtime, not at a limit.
    fn converged(&self) -> bool {
        self.completed() && self.rounds() < max_rounds() && self.total_ms() < (MAX_TIME_S * 1000) as f64
    }

    fn to_json(&self) -> Value {
        let num = |f: f64| if f.is_finite() { json!(f) } else { Value::Null };
        json!({
            "size_mib": self.size_mib,
            "rate_mib_per_s": self.rate_mib,
            "run": self.run,
            "outcome": self.outcome,
            "total_ms": num(self.total_ms()),
            "downtime_ms": num(self.downtime_ms()),
            "rounds": self.rounds(),
            "bytes_sent": self.bytes_sent(),
            "raw_bytes_per_s": num(self.raw_bytes_per_s),
            "bound_ms": num(self.bound_ms()),
            "ratio": num(self.ratio()),
            "raw_cpu_ms_per_gib": num(self.raw_cpu_ms_per_gib),
            "cpu_src_ms": num(self.cpu_src_ms),
            "cpu_dst_ms": num(self.cpu_dst_ms),
            "cpu_floor_ms": num(self.cpu_floor_ms()),
            "max_throttle": self.max_throttle(),
            "measured_dirty_mib_per_s": num(self.measured_dirty_mib()),
            "converged": self.converged(),
            "verified": self.verified,
            "report": self.report,
        })
    }
}

/// One target checked on one case (size, or size and rate).
#[derive(Clone, Debug, PartialEq)]
struct Verdict {
    target: String,
    case: String,
    value: String,
    pass: bool,
}

/// The targets over the rows; a case with several runs is judged
/// by its worst run, and a run that failed misses every target it touches.
fn verdicts(rows: &[Row]) -> Vec<Verdict> {
    let mut cases: Vec<(u64, u64)> = rows.iter().map(|r| (r.size_mib, r.rate_mib)).collect();
    cases.sort();
    cases.dedup();
    let of = |size: u64, rate: u64| rows.iter().filter(move |r| r.size_mib == size && r.rate_mib == rate);
    let mut out = Vec::new();
    for rate in DOWNTIME_RATES {
        for &(size, _) in cases.iter().filter(|c| c.1 == rate) {
            let worst = of(size, rate).map(|r| if r.completed() { r.downtime_ms() } else { f64::INFINITY }).fold(0.0, f64::max);
            out.push(Verdict {
                target: format!("downtime <= {MAX_DOWNTIME_MS} ms at {rate} MiB/s"),
                case: format!("{size} MiB"),
                value: if worst.is_finite() { format!("{worst:.1} ms") } else { "failed".into() },
                pass: worst <= MAX_DOWNTIME_MS as f64,
            });
        }
    }
    for &(size, rate) in &cases {
        let worst = of(size, rate).map(|r| if r.completed() { r.ratio() } else { f64::INFINITY }).fold(0.0, f64::max);
        out.push(Verdict {
            target: format!("total <= {RATIO_TARGET} x bound"),
            case: format!("{size} MiB at {rate} MiB/s"),
            value: if worst.is_finite() { format!("{worst:.2} x") } else { "failed".into() },
            pass: worst <= RATIO_TARGET,
        });
    }
    for &(size, _) in cases.iter().filter(|c| c.1 == CONVERGE_RATE) {
        let runs: Vec<&Row> = of(size, CONVERGE_RATE).collect();
        let pass = runs.iter().all(|r| r.converged());
        let rounds = runs.iter().map(|r| r.rounds()).max().unwrap_or(0);
        let throttle = runs.iter().map(|r| r.max_throttle()).fold(0.0, f64::max);
        out.push(Verdict {
            target: format!("converges at {CONVERGE_RATE} MiB/s"),
            case: format!("{size} MiB"),
            value: if pass {
                format!("{rounds} rounds, throttle {:.0} %", throttle * 100.0)
            } else if runs.iter().all(|r| r.completed()) {
                format!("forced at a limit ({rounds} rounds)")
            } else {
                "failed".into()
            },
            pass,
        });
    }
    out
}

pub(crate) fn fmt_f(f: f64, prec: usize) -> String {
    if f.is_finite() {
        format!("{f:.prec$}")
    } else {
        "-".into()
    }
}

/// The rows as a table, the stop breakdown, and the verdicts.
fn render(rows: &[Row], verdicts: &[Verdict]) -> String {
    let mib = |b: f64| b / (1u64 << 20) as f64;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:>5} {:>5} {:>3} {:>9} {:>9} {:>6} {:>9} {:>6} {:>8} {:>9} {:>6} {:>6}  verified",
        "MiB", "MiB/s", "run", "total ms", "down ms", "rounds", "sent MiB", "dirty", "raw MiB/s", "bound ms", "ratio", "thrtl"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>5} {:>5} {:>3} {:>9} {:>9} {:>6} {:>9} {:>6} {:>8} {:>9} {:>6} {:>5.0}%  {}",
            r.size_mib,
            r.rate_mib,
            r.run,
            fmt_f(r.total_ms(), 1),
            fmt_f(r.downtime_ms(), 1),
            r.rounds(),
            fmt_f(mib(r.bytes_sent() as f64), 1),
            fmt_f(r.measured_dirty_mib(), 0),
            fmt_f(mib(r.raw_bytes_per_s), 0),
            fmt_f(r.bound_ms(), 1),
            fmt_f(r.ratio(), 2),
            r.max_throttle() * 100.0,
            if r.completed() { r.verified.clone() } else { format!("{} ({})", r.verified, r.outcome) }
        );
    }
    let _ = writeln!(s, "\n(dirty: MiB/s pre-copy measured in round 1; bound: bytes sent / raw bandwidth; thrtl: max CPU throttle)");
    let _ = writeln!(
        s,
        "\nwhere the downtime went (ms; freeze: from the stop to the state dumped, of which stopping: the network locked and every thread stopped; check: the target's read-back of the restored tree, part of restore):"
    );
    let _ = writeln!(
        s,
        "{:>5} {:>5} {:>3} {:>9} {:>8} {:>9} {:>11} {:>10} {:>9} {:>9} {:>7} {:>9}",
        "MiB", "MiB/s", "run", "downtime", "freeze", "stopping", "final pgs", "state KiB", "transfer", "restore", "check", "handover"
    );
    for r in rows {
        if let Some(b) = r.report.as_ref().and_then(|x| x.stop.as_ref()) {
            let _ = writeln!(
                s,
                "{:>5} {:>5} {:>3} {:>9.1} {:>8.1} {:>9.1} {:>11} {:>10.1} {:>9.1} {:>9.1} {:>7.2} {:>9.1}",
                r.size_mib,
                r.rate_mib,
                r.run,
                r.downtime_ms(),
                b.freeze_ms,
                b.stopping_ms,
                b.final_pages,
                b.state_image_bytes as f64 / 1024.0,
                b.transfer_ms,
                b.restore_ms,
                b.verify_ms,
                b.handover_ms
            );
        }
    }
    let _ = writeln!(s, "\nwhere the time and the CPU went (ms; CPU of both lpmd while it ran):");
    let _ = writeln!(
        s,
        "{:>5} {:>5} {:>3} {:>7} {:>7} {:>8} {:>8} {:>9} {:>8} {:>8} {:>8} {:>8} {:>11} {:>11}",
        "MiB",
        "MiB/s",
        "run",
        "setup",
        "rounds",
        "between",
        "downtime",
        "total",
        "cpu src",
        "cpu dst",
        "floor",
        "1.3xbnd",
        "mover/GiB",
        "raw/GiB"
    );
    for r in rows {
        let Some(rep) = r.report.as_ref() else { continue };
        let _ = writeln!(
            s,
            "{:>5} {:>5} {:>3} {:>7.1} {:>7.1} {:>8.1} {:>8.1} {:>9.1} {:>8.0} {:>8.0} {:>8.0} {:>8.0} {:>11.0} {:>11.0}",
            r.size_mib,
            r.rate_mib,
            r.run,
            rep.setup_ms,
            rep.rounds.iter().map(|x| x.duration_ms).sum::<f64>(),
            r.between_ms(),
            r.downtime_ms(),
            r.total_ms(),
            r.cpu_src_ms,
            r.cpu_dst_ms,
            r.cpu_floor_ms(),
            RATIO_TARGET * r.bound_ms(),
            r.mover_cpu_ms_per_gib(),
            r.raw_cpu_ms_per_gib
        );
    }
    let _ = writeln!(
        s,
        "\n(floor: the CPU both lpmd used over this machine's {} CPUs; where it exceeds 1.3 x bound no schedule of the same work meets\n the ratio target here. mover/GiB: that CPU per GiB sent; raw/GiB: the raw stream's sender and receiver per GiB)",
        cpus()
    );
    let _ = writeln!(s, "\ntargets:");
    for v in verdicts {
        let _ = writeln!(s, "  {:34} {:22} {:28} {}", v.target, v.case, v.value, if v.pass { "PASS" } else { "MISS" });
    }
    s
}

/// Tears the lab down once, whichever comes first: the end of the
/// benchmark (drop) or a signal.
#[derive(Clone)]
pub(crate) struct Teardown {
    dir: PathBuf,
    done: Arc<Mutex<bool>>,
    /// Set by the signal thread before it tears down: the benchmark then
    /// stops touching the lab (see [`Teardown::park_if_stopping`]).
    stopping: Arc<AtomicBool>,
}

impl Teardown {
    pub(crate) fn new(dir: PathBuf) -> Teardown {
        Teardown { dir, done: Arc::new(Mutex::new(false)), stopping: Arc::new(AtomicBool::new(false)) }
    }

    fn run(&self) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        if !*done {
            *done = true;
            // A second try catches a file the benchmark wrote into the lab
            // directory in the moment before it saw `stopping`.
            if let Err(e) = Lab::down(&self.dir).or_else(|_| {
                std::thread::sleep(Duration::from_millis(300));
                Lab::down(&self.dir)
            }) {
                eprintln!("lpm: lab down: {e:#}");
            }
        }
    }

    /// When a signal is tearing the lab down, waits for the process to
    /// exit instead of going on with a lab that is disappearing.
    pub(crate) fn park_if_stopping(&self) {
        while self.stopping.load(Ordering::SeqCst) {
            std::thread::park();
        }
    }
}

pub(crate) struct LabGuard(pub(crate) Teardown);

impl Drop for LabGuard {
    fn drop(&mut self) {
        self.0.run();
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in this thread (and the threads it
/// starts later) and starts a thread that, on one of them, tears the lab
/// down and exits. Programs this process starts inherit the mask: the
/// lab's `lpmd`s block SIGINT and SIGTERM themselves and wait for them,
/// so only their SIGHUP differs from `lpm lab up`'s; partitions start with
/// an empty mask whoever started their `lpmd`.
pub(crate) fn teardown_on_signal(t: Teardown) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        set.add(s);
    }
    set.thread_block().context("block termination signals")?;
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            if let Ok(sig) = set.wait() {
                eprintln!("lpm: {sig}: tearing the benchmark's lab down");
                t.stopping.store(true, Ordering::SeqCst);
                t.run();
                std::process::exit(128 + sig as i32);
            }
        })
        .context("start the signal thread")?;
    Ok(())
}

/// The benchmark's lab and how to talk to it.
pub(crate) struct Bench {
    pub(crate) lab: Lab,
    pub(crate) key: lpm_wire::Key,
    pub(crate) dirtier: PathBuf,
    pub(crate) teardown: Teardown,
}

impl Bench {
    pub(crate) fn client(&self, host: &str) -> Result<Client> {
        let h = self.lab.host(host).ok_or_else(|| anyhow!("no host {host:?} in the benchmark's lab"))?;
        Client::connect(&h.name, &h.control, &self.key)
    }

    pub(crate) fn show(&self, host: &str, name: &str) -> Result<PartitionInfo> {
        match self.client(host)?.call(&Request::Show(name.to_string()))? {
            Response::Partition(p) => Ok(*p),
            other => bail!("{host}: unexpected answer to show {name}: {other:?}"),
        }
    }

    pub(crate) fn logs(&self, host: &str, name: &str) -> Result<String> {
        match self.client(host)?.call(&Request::Logs { name: name.to_string(), max_bytes: 1 << 16 })? {
            Response::Logs(t) => Ok(t),
            other => bail!("{host}: unexpected answer to logs {name}: {other:?}"),
        }
    }

    /// Polls the console log of `name` on `host` until a line starts with
    /// `prefix`; returns that line.
    pub(crate) fn wait_line(&self, host: &str, name: &str, prefix: &str, timeout: Duration) -> Result<String> {
        let t = Instant::now();
        loop {
            let log = self.logs(host, name)?;
            if let Some(line) = log.lines().find(|l| l.starts_with(prefix)) {
                return Ok(line.to_string());
            }
            if t.elapsed() > timeout {
                bail!("partition {name} on {host} printed no {prefix:?} line within {timeout:?}; console log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// One size × rate × run: a fresh partition on h1 moved to h2.
    fn case(&self, size_mib: u64, rate_mib: u64, run: usize) -> Row {
        self.teardown.park_if_stopping();
        let mut row = Row { size_mib, rate_mib, run, ..Row::default() };
        let name = format!("bm-{size_mib}m-{rate_mib}r-{run}");
        let ip = match self.lab.allocate_ip(&name) {
            Ok(ip) => ip,
            Err(e) => {
                row.outcome = format!("error: {e:#}");
                row.verified = "not checked".into();
                return row;
            }
        };
        let res = self.case_in(&name, &format!("{ip}/24"), &mut row);
        self.teardown.park_if_stopping();
        if let Err(e) = res {
            row.outcome = format!("error: {e:#}");
            if row.verified.is_empty() {
                row.verified = "not checked".into();
            }
        }
        // Wherever it ended up, it goes; the lab's teardown would also
        // catch what this misses.
        for host in ["h2", "h1"] {
            if self.client(host).and_then(|mut c| c.call(&Request::Delete(name.clone()))).is_ok() {
                break;
            }
        }
        if let Err(e) = self.lab.release_ip(ip) {
            eprintln!("lpm: release {ip}: {e:#}");
        }
        row
    }

    fn case_in(&self, name: &str, ip: &str, row: &mut Row) -> Result<()> {
        let spec = PartitionSpec {
            name: name.to_string(),
            command: vec![self.dirtier.display().to_string(), row.size_mib.to_string(), row.rate_mib.to_string()],
            memory: Some((row.size_mib << 20) + MEMORY_SLACK),
            cpus: None,
            rt_runtime_us: None,
            ip: Some(ip.to_string()),
            mac: None,
            volumes: vec![self.lab.dir().to_path_buf()],
            isolation: Default::default(),
        };
        match self.client("h1")?.call(&Request::Create(spec))? {
            Response::Partition(_) => {}
            other => bail!("unexpected answer to create {name}: {other:?}"),
        }
        self.wait_line("h1", name, "ready", READY_TIMEOUT)?;
        // Let the dirtier's pacing settle before pre-copy measures it.
        std::thread::sleep(Duration::from_millis(300));
        let raw = raw_bandwidth(&self.lab, "h1", "h2", RAW_BYTES).context("raw TCP bandwidth h1 -> h2")?;
        row.raw_bytes_per_s = raw.bytes_per_s;
        row.raw_cpu_ms_per_gib = raw.cpu.as_secs_f64() * 1e3 / (RAW_BYTES as f64 / (1u64 << 30) as f64);
        let lpmd = |h: &str| self.lab.host(h).and_then(|m| m.pid);
        let (src, dst) = (lpmd("h1"), lpmd("h2"));
        let cpu_before = (src.and_then(process_cpu), dst.and_then(process_cpu));
        let target = self.lab.host("h2").ok_or_else(|| anyhow!("no host h2 in the benchmark's lab"))?;
        let req = MigrateRequest {
            name: name.to_string(),
            target: "h2".into(),
            target_addr: target.listen.to_string(),
            max_downtime_ms: MAX_DOWNTIME_MS,
            max_total_s: MAX_TIME_S,
            force: true,
            streams: 1,
            compress: None,
            validate_only: false,
        };
        let report = match self.client("h1")?.call_with_progress(&Request::Migrate(req), |_| {})? {
            Response::Report(r) => *r,
            other => bail!("unexpected answer to migrate {name}: {other:?}"),
        };
        let used = |pid: Option<i32>, before: Option<Duration>| match (pid.and_then(process_cpu), before) {
            (Some(after), Some(before)) => after.saturating_sub(before).as_secs_f64() * 1e3,
            _ => f64::NAN,
        };
        row.cpu_src_ms = used(src, cpu_before.0);
        row.cpu_dst_ms = used(dst, cpu_before.1);
        row.outcome = report.outcome_text();
        let completed = report.outcome == Outcome::Completed;
        row.report = Some(report);
        if !completed {
            row.verified = "not checked".into();
            return Ok(());
        }
        let p = self.show("h2", name)?;
        if p.host != "h2" || p.state != "running" {
            bail!("after the migration {name} is {} on {}", p.state, p.host);
        }
        let pid = p.pid.ok_or_else(|| anyhow!("{name} runs on h2 without a pid"))?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1)
            .with_context(|| format!("SIGUSR1 to {name}'s init (pid {pid})"))?;
        let line = self.wait_line("h2", name, "verify 1 ", VERIFY_TIMEOUT)?;
        row.verified = line.trim_start_matches("verify 1 ").to_string();
        Ok(())
    }
}

/// What the raw stream measured.
struct Raw {
    bytes_per_s: f64,
    /// CPU time of its sending and its receiving thread.
    cpu: Duration,
}

/// CPU time (user and system) the calling thread used so far.
fn thread_cpu() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    getrusage(UsageWho::RUSAGE_THREAD).map(|u| tv(u.user_time()) + tv(u.system_time())).unwrap_or_default()
}

/// CPU time (user and system) process `pid` used so far, its ended
/// threads included, from /proc/PID/stat (clock-tick resolution).
fn process_cpu(pid: i32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces): state is field 3,
    // utime and stime fields 14 and 15.
    let rest = stat.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().unwrap_or(100) as u64;
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz.max(1)))
}

/// This machine's CPUs.
fn cpus() -> f64 {
    std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0)
}

/// One TCP stream from member `from`'s namespace to a listener on member
/// `to`'s management address: `bytes` in writes of [`RAW_CHUNK`] with
/// Nagle off, timed until the receiver has read the last byte (the
/// mover's path and buffers, without its page work).
fn raw_bandwidth(lab: &Lab, from: &str, to: &str, bytes: u64) -> Result<Raw> {
    let dst = lab.host(to).ok_or_else(|| anyhow!("no host {to:?} in the lab"))?.mgmt_addr;
    let to_ns = lab.netns_of(to)?.fd()?;
    let from_ns = lab.netns_of(from)?.fd()?;
    // Sockets belong to the namespace they were created in, whichever
    // thread uses them later.
    let listener =
        lpm_sys::net::in_netns(to_ns.as_fd(), || TcpListener::bind((dst, 0)))?.with_context(|| format!("listen on {dst} in {to}"))?;
    let addr: SocketAddr = listener.local_addr().context("listener address")?;
    let mut tx = lpm_sys::net::in_netns(from_ns.as_fd(), || TcpStream::connect_timeout(&addr, Duration::from_secs(5)))?
        .with_context(|| format!("connect from {from} to {addr}"))?;
    // The connection is complete in the backlog; accepting here means no
    // thread is left waiting if the writer fails.
    let (mut rx, _) = listener.accept().context("accept the raw stream")?;
    tx.set_nodelay(true).context("TCP_NODELAY")?;
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<(u64, Duration)> {
        let cpu = thread_cpu();
        let buf = vec![0xa5u8; RAW_CHUNK];
        let mut sent = 0;
        while sent < bytes {
            tx.write_all(&buf)?;
            sent += RAW_CHUNK as u64;
        }
        tx.shutdown(Shutdown::Write)?;
        Ok((sent, thread_cpu().saturating_sub(cpu)))
    });
    let rx_cpu = thread_cpu();
    let mut buf = vec![0u8; RAW_CHUNK];
    let mut got = 0u64;
    let read = loop {
        match rx.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => break Err(e),
        }
    };
    let elapsed = start.elapsed();
    let rx_cpu = thread_cpu().saturating_sub(rx_cpu);
    let (sent, tx_cpu) = writer.join().map_err(|_| anyhow!("the raw stream's writer panicked"))?.context("write the raw stream")?;
    read.context("read the raw stream")?;
    if got != sent {
        bail!("the raw stream delivered {got} of {sent} bytes");
    }
    Ok(Raw { bytes_per_s: got as f64 / elapsed.as_secs_f64(), cpu: tx_cpu + rx_cpu })
}

/// Compiles the dirtier into `dir`.
pub(crate) fn build_dirtier(dir: &Path) -> Result<PathBuf> {
    let src = dir.join("dirtier.c");
    let bin = dir.join("dirtier");
    std::fs::write(&src, DIRTIER_C).with_context(|| format!("write {}", src.display()))?;
    let out = std::process::Command::new("gcc")
        .args(["-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .stdin(std::process::Stdio::null())
        .output()
        .context("run gcc (needed to build the benchmark's partition program)")?;
    if !out.status.success() {
        bail!("gcc {} failed: {}", src.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(bin)
}

/// Brings up a benchmark's own lab of two hosts in a new directory
/// (`lpm-bench-LABEL-...`), which commands of this process find and
/// nobody else's, and builds the dirtier in it. The lab is torn down when
/// the guard drops (after the bench), or at a signal.
pub(crate) fn bench_lab(label: &str) -> Result<(LabGuard, Bench)> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let dir = std::env::temp_dir().join(format!("lpm-bench-{label}-{}-{nanos}", std::process::id()));
    std::env::set_var("LPM_LAB", &dir);
    let teardown = Teardown::new(dir.clone());
    teardown_on_signal(teardown.clone())?;
    let mut opts = LabOptions::new(std::env::current_exe().context("find the lpm binary")?);
    opts.lpmd_args = vec!["daemon".into()];
    opts.hosts = 2;
    let guard = LabGuard(teardown.clone());
    eprintln!("== lab: two hosts in {}", dir.display());
    let lab = Lab::up(&dir, &opts);
    teardown.park_if_stopping();
    let lab = lab.context("lab up")?;
    let key = read_key(&lab.key_path())?;
    let dirtier = build_dirtier(lab.dir())?;
    Ok((guard, Bench { lab, key, dirtier, teardown }))
}

/// Every size × rate × run on `bench`'s lab as it is (`mode` names it in
/// the progress lines).
fn cases(bench: &Bench, a: &MigrateBench, mode: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for &size in &a.sizes {
        for &rate in &a.rates {
            for run in 1..=a.runs {
                eprintln!("== {size} MiB partition dirtying {rate} MiB/s, run {run}, {mode}");
                let row = bench.case(size, rate, run);
                eprintln!(
                    "   {}: total {} ms, downtime {} ms, {} rounds, {:.1} MiB sent, raw {:.0} MiB/s, ratio {}, memory {}",
                    row.outcome,
                    fmt_f(row.total_ms(), 1),
                    fmt_f(row.downtime_ms(), 1),
                    row.rounds(),
                    row.bytes_sent() as f64 / (1u64 << 20) as f64,
                    row.raw_bytes_per_s / (1u64 << 20) as f64,
                    fmt_f(row.ratio(), 2),
                    row.verified
                );
                rows.push(row);
            }
        }
    }
    rows
}

/// What mutual TLS costs: each case's total time, downtime and source
/// CPU with TLS beside the same case's in plain mode.
fn render_cost(tls: &[Row], plain: &[Row]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "mutual TLS beside plain mode (insecure), the same cases in the same lab:");
    let _ = writeln!(
        s,
        "{:>5} {:>5} {:>3} {:>10} {:>10} {:>7} {:>9} {:>9} {:>7} {:>8} {:>8} {:>10} {:>10}",
        "MiB",
        "MiB/s",
        "run",
        "TLS total",
        "plain tot",
        "cost",
        "TLS down",
        "plain dn",
        "cost",
        "TLS MiB/s",
        "plain",
        "TLS src cpu",
        "plain cpu"
    );
    let pct = |a: f64, b: f64| if b > 0.0 { format!("{:+.0}%", (a / b - 1.0) * 100.0) } else { "-".into() };
    // The mover's throughput over the whole migration (bytes sent over
    // total time), as the report gives it.
    let mibs = |r: &Row| r.report.as_ref().map_or("-".to_string(), |r| format!("{:.0}", r.throughput_bytes_per_s / (1u64 << 20) as f64));
    for (t, p) in tls.iter().zip(plain) {
        let _ = writeln!(
            s,
            "{:>5} {:>5} {:>3} {:>10} {:>10} {:>7} {:>9} {:>9} {:>7} {:>8} {:>8} {:>10} {:>10}",
            t.size_mib,
            t.rate_mib,
            t.run,
            fmt_f(t.total_ms(), 1),
            fmt_f(p.total_ms(), 1),
            pct(t.total_ms(), p.total_ms()),
            fmt_f(t.downtime_ms(), 1),
            fmt_f(p.downtime_ms(), 1),
            pct(t.downtime_ms(), p.downtime_ms()),
            mibs(t),
            mibs(p),
            fmt_f(t.cpu_src_ms, 0),
            fmt_f(p.cpu_src_ms, 0)
        );
    }
    let _ = writeln!(
        s,
        "(cost: TLS over plain; MiB/s: the mover's throughput over the migration; cpu: the source lpmd's CPU ms during the migration)"
    );
    s
}

/// Runs `lpm bench migrate`: prints the table (or JSON) and fails when a
/// migration failed or a partition's memory was not intact after it;
/// missed performance targets are printed, not errors.
pub fn run(a: &MigrateBench) -> Result<()> {
    if a.sizes.is_empty() || a.rates.is_empty() || a.runs == 0 {
        bail!("nothing to measure: give at least one size, one rate and one run");
    }
    if a.sizes.contains(&0) {
        bail!("a partition size of 0 MiB cannot be measured");
    }
    let (_guard, mut bench) = bench_lab("lab")?;
    let rows = cases(&bench, a, "mutual TLS");
    let plain = if a.compare_plain {
        eprintln!("== the same cases with the movers in plain mode (insecure)");
        bench.lab = bench.lab.set_insecure(true).context("restart the hosts insecure")?;
        Some(cases(&bench, a, "plain"))
    } else {
        None
    };
    let v = verdicts(&rows);
    if a.json {
        let targets: Vec<Value> = v.iter().map(|x| json!({"target": x.target, "case": x.case, "value": x.value, "pass": x.pass})).collect();
        let rows_json: Vec<Value> = rows.iter().map(Row::to_json).collect();
        let mut out = json!({"rows": rows_json, "targets": targets});
        if let Some(p) = &plain {
            out["plain_rows"] = p.iter().map(Row::to_json).collect();
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print!("{}", render(&rows, &v));
        if let Some(p) = &plain {
            print!("\n{}", render_cost(&rows, p));
        }
    }
    let broken: Vec<String> = rows
        .iter()
        .chain(plain.iter().flatten())
        .filter(|r| !r.completed() || !r.verified_ok())
        .map(|r| format!("{} MiB at {} MiB/s run {}: {} / memory {}", r.size_mib, r.rate_mib, r.run, r.outcome, r.verified))
        .collect();
    if !broken.is_empty() {
        bail!("{} of {} migrations failed or lost memory: {}", broken.len(), rows.len(), broken.join("; "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Seek, SeekFrom};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU32, Ordering};

    use lpm_migrate::report::StopBreakdown;

    use super::*;

    fn report(total_ms: f64, downtime_ms: f64, rounds: usize, bytes: u64, throttle: f64) -> Report {
        let round = lpm_migrate::report::Round {
            n: 1,
            pages: bytes / 4096,
            bytes,
            zero_pages_skipped: 0,
            duration_ms: total_ms,
            dirty_pages_per_s: 0.0,
            dirty_mib_per_s: 0.0,
            throttle: 0.0,
        };
        Report {
            id: String::new(),
            partition: "p".into(),
            source: "h1".into(),
            target: "h2".into(),
            started_unix_ms: 0,
            outcome: Outcome::Completed,
            total_ms,
            setup_ms: 0.0,
            downtime_ms,
            rounds: vec![round; rounds],
            stop: Some(StopBreakdown::default()),
            bytes_total: bytes,
            throughput_bytes_per_s: 0.0,
            max_throttle: throttle,
            streams: 1,
            compression: "none".into(),
            budget: None,
        }
    }

    /// A row at 1000 MiB/s raw: `mib` MiB sent bound to `mib` ms.
    fn row(size: u64, rate: u64, run: usize, r: Report) -> Row {
        Row {
            size_mib: size,
            rate_mib: rate,
            run,
            outcome: "completed".into(),
            raw_bytes_per_s: 1000.0 * (1 << 20) as f64,
            verified: "OK".into(),
            report: Some(r),
            ..Row::default()
        }
    }

    #[test]
    fn verdicts_judge_each_case_by_its_worst_run() {
        let mib = 1u64 << 20;
        let failed = Row {
            outcome: "error: boom".into(),
            verified: "not checked".into(),
            report: None,
            ..row(1024, 50, 1, report(0.0, 0.0, 0, 0, 0.0))
        };
        let rows = vec![
            row(256, 0, 1, report(300.0, 20.0, 2, 256 * mib, 0.0)),
            row(256, 0, 2, report(320.0, 60.0, 2, 256 * mib, 0.0)),
            row(256, 50, 1, report(250.0, 49.0, 3, 256 * mib, 0.0)),
            failed,
            row(1024, 200, 1, report(2000.0, 40.0, 6, 1200 * mib, 0.4)),
            row(256, 200, 1, report(61_000.0, 900.0, 12, 5000 * mib, 0.99)),
            row(256, 200, 2, report(400.0, 30.0, max_rounds(), 300 * mib, 0.99)),
        ];
        let v = verdicts(&rows);
        let find = |target: &str, case: &str| {
            v.iter().find(|x| x.target.starts_with(target) && x.case == case).unwrap_or_else(|| panic!("no {target} {case}: {v:?}"))
        };
        let d = find("downtime <= 50 ms at 0 MiB/s", "256 MiB");
        assert!(!d.pass && d.value == "60.0 ms", "{d:?}");
        assert!(find("downtime <= 50 ms at 50 MiB/s", "256 MiB").pass);
        let f = find("downtime <= 50 ms at 50 MiB/s", "1024 MiB");
        assert!(!f.pass && f.value == "failed", "{f:?}");
        // 300 ms against 256 ms of bound: 1.17; 320 ms: 1.25.
        let t = find("total <= 1.3 x bound", "256 MiB at 0 MiB/s");
        assert!(t.pass && t.value == "1.25 x", "{t:?}");
        let t = find("total <= 1.3 x bound", "1024 MiB at 200 MiB/s");
        assert!(!t.pass && t.value == "1.67 x", "{t:?}");
        assert!(!find("total <= 1.3 x bound", "1024 MiB at 50 MiB/s").pass);
        let c = find("converges at 200 MiB/s", "1024 MiB");
        assert!(c.pass && c.value == "6 rounds, throttle 40 %", "{c:?}");
        // One run at the time limit, one at the round limit.
        let c = find("converges at 200 MiB/s", "256 MiB");
        assert!(!c.pass && c.value.starts_with("forced at a limit"), "{c:?}");
        // No downtime verdict for rates the target does not cover.
        assert!(!v.iter().any(|x| x.target.starts_with("downtime") && x.target.contains("200")), "{v:?}");
        assert_eq!(v.iter().filter(|x| x.target.starts_with("total")).count(), 5, "{v:?}");
        let text = render(&rows, &v);
        assert!(text.contains("MISS") && text.contains("PASS") && text.contains("where the downtime went"), "{text}");
        let j = rows[0].to_json();
        assert_eq!(j["bytes_sent"], json!(256 * mib));
        assert!((j["ratio"].as_f64().unwrap() - 300.0 / 256.0).abs() < 1e-9, "{j}");
        assert_eq!(rows[3].to_json()["ratio"], Value::Null);
    }

    #[test]
    fn arguments_parse_as_lists() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            b: MigrateBench,
        }
        let c = <Cli as clap::Parser>::try_parse_from(["x"]).unwrap();
        assert_eq!((c.b.sizes, c.b.rates, c.b.runs, c.b.json), (vec![256, 1024], vec![0, 50, 200], 1, false));
        let c = <Cli as clap::Parser>::try_parse_from(["x", "--sizes", "16", "--rates", "0,10", "--runs", "2", "--json"]).unwrap();
        assert_eq!((c.b.sizes, c.b.rates, c.b.runs, c.b.json), (vec![16], vec![0, 10], 2, true));
        assert!(<Cli as clap::Parser>::try_parse_from(["x", "--sizes", "big"]).is_err());
    }

    /// The dirtier, run as a plain child, killed and its directory removed
    /// however the test ends.
    struct Dirtier {
        child: Child,
        out: BufReader<std::process::ChildStdout>,
        dir: PathBuf,
    }

    impl Drop for Dirtier {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Dirtier {
        fn start(mib: u64, rate: u64) -> Dirtier {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!("lpm-dirtier-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
            std::fs::create_dir_all(&dir).unwrap();
            let bin = build_dirtier(&dir).unwrap();
            let mut child =
                Command::new(bin).args([mib.to_string(), rate.to_string()]).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
            let out = BufReader::new(child.stdout.take().unwrap());
            Dirtier { child, out, dir }
        }

        fn line(&mut self) -> String {
            let mut l = String::new();
            self.out.read_line(&mut l).unwrap();
            l
        }

        fn verify(&mut self) -> String {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGUSR1).unwrap();
            self.line()
        }
    }

    #[test]
    fn dirtier_writes_at_its_rate_and_its_check_catches_a_wrong_page() {
        let mut d = Dirtier::start(16, 100);
        let ready = d.line();
        assert!(ready.starts_with("ready size=16 MiB rate=100 MiB/s pages=4096 base=0x"), "{ready}");
        let base = u64::from_str_radix(ready.trim().rsplit("base=0x").next().unwrap(), 16).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let ok = d.verify();
        assert!(ok.starts_with("verify 1 OK 4096 pages"), "{ok}");
        // About 100 MiB/s = 25600 pages/s for half a second (slow runners
        // fall behind, never ahead: the backlog is capped).
        let writes: u64 = ok.trim().trim_end_matches(')').rsplit(' ').next().unwrap().parse().unwrap();
        assert!((5000..=14_000).contains(&writes), "{writes} page writes in 0.5 s: {ok}");
        // One word of page 7 changed behind its back is found, by number.
        let mut mem = std::fs::OpenOptions::new().write(true).open(format!("/proc/{}/mem", d.child.id())).unwrap();
        mem.seek(SeekFrom::Start(base + 7 * 4096 + 100 * 8)).unwrap();
        mem.write_all(&[0xee; 8]).unwrap();
        let bad = d.verify();
        assert!(bad.starts_with("verify 2 BAD 1 of 4096 pages wrong, first page 7 word 100"), "{bad}");
    }

    #[test]
    fn dirtier_check_catches_a_stale_page() {
        // A page holding an older generation (a resend that never came) is
        // self-consistent, yet wrong against the generation table.
        let mut d = Dirtier::start(4, 0);
        let ready = d.line();
        let base = u64::from_str_radix(ready.trim().rsplit("base=0x").next().unwrap(), 16).unwrap();
        let path = format!("/proc/{}/mem", d.child.id());
        let mut page = vec![0u8; 4096];
        let mut mem = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        mem.seek(SeekFrom::Start(base + 3 * 4096)).unwrap();
        mem.read_exact(&mut page).unwrap();
        assert_eq!(&page[..16], &[3, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        // Page 3 copied over page 5, with page 5's index: right index and
        // generation 1, wrong contents for page 5.
        page[0] = 5;
        mem.seek(SeekFrom::Start(base + 5 * 4096)).unwrap();
        mem.write_all(&page).unwrap();
        let bad = d.verify();
        assert!(bad.starts_with("verify 1 BAD 1 of 1024 pages wrong, first page 5 word 2"), "{bad}");
    }

    #[test]
    fn process_cpu_counts_what_this_process_burns() {
        // Against the kernel's own account of this process (getrusage),
        // not the wall clock: on a busy machine 200 ms of wall time may
        // hold little CPU time.
        let used = || {
            let r = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).expect("getrusage");
            let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
            tv(r.user_time()) + tv(r.system_time())
        };
        let me = std::process::id() as i32;
        let (before, r0) = (process_cpu(me).expect("read /proc/self/stat"), used());
        let t = Instant::now();
        let mut x = 0u64;
        while used() < r0 + Duration::from_millis(200) {
            assert!(t.elapsed() < Duration::from_secs(60), "no CPU time for a minute");
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let (after, r1) = (process_cpu(me).expect("read /proc/self/stat"), used());
        let (counted, burnt) = (after.saturating_sub(before), r1 - r0);
        // /proc counts in clock ticks (10 ms here).
        assert!(
            counted + Duration::from_millis(30) >= burnt && counted <= burnt + Duration::from_millis(30),
            "{burnt:?} of CPU counted as {counted:?}"
        );
        assert_eq!(process_cpu(i32::MAX), None);
    }

    #[test]
    fn raw_bandwidth_between_two_hosts_of_a_lab() {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!("lpm-bench-raw-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _guard = LabGuard(Teardown::new(dir.clone()));
        let lpm = lpm_binary();
        let mut opts = LabOptions::new(lpm);
        opts.lpmd_args = vec!["daemon".into()];
        let lab = Lab::up(&dir, &opts).unwrap();
        let raw = raw_bandwidth(&lab, "h1", "h2", 64 << 20).unwrap();
        let bw = raw.bytes_per_s;
        // Anything from a slow veth to memory speed; a broken measurement
        // gives 0, infinity or an error.
        assert!(bw > 10.0 * (1 << 20) as f64 && bw < 100.0 * (1u64 << 30) as f64, "{bw} bytes/s");
        // Sending 64 MiB over TCP takes CPU, on each side, and no more than
        // the whole machine had meanwhile.
        let took = 64.0 * (1 << 20) as f64 / bw;
        assert!(raw.cpu > Duration::ZERO && raw.cpu.as_secs_f64() <= took * cpus() + 0.05, "{:?} of CPU in {took} s", raw.cpu);
        // No route from the client to the management network: the stream
        // fails with an error instead of hanging.
        assert!(raw_bandwidth(&lab, "client", "h2", 1 << 20).is_err());
    }

    /// The `lpm` binary next to this test binary (cargo builds it for the
    /// crate's integration tests: target/PROFILE/lpm, the test being in
    /// target/PROFILE/deps).
    fn lpm_binary() -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().and_then(Path::parent).unwrap().join("lpm");
        assert!(bin.exists(), "{} is missing: build it first (cargo build -p lpm)", bin.display());
        bin
    }
}
