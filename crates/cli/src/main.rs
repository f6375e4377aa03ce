//! `lpm`: Live Partition Mobility for Linux, the command line.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

mod bench;
mod bench_clients;
mod bench_migrate;
mod bench_plan;
mod cluster;
mod console;
mod hosts;
mod migrations;
mod pki;
mod table;
use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lpm", version = env!("LPM_VERSION"), about = "Live Partition Mobility for Linux")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Probe every kernel feature lpm relies on; fail naming what is missing.
    Check {
        /// Print the features and the kinds of state as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Checkpoint the process tree rooted at PID into an image directory.
    Checkpoint {
        /// Root of the tree.
        #[arg(long)]
        pid: i32,
        /// Image directory (created if missing).
        #[arg(long)]
        images: PathBuf,
        /// Let the tree continue after the dump instead of killing it.
        #[arg(long)]
        leave_running: bool,
        /// Dump TCP connections to peers outside the tree instead of
        /// refusing them: lpm locks the network for them (nftables rules,
        /// iptables where nft is missing) until `lpm restore` of the image
        /// has rebuilt them, so their peers only retransmit meanwhile.
        #[arg(long)]
        tcp_established: bool,
        /// The tree is a job of an interactive shell: its descriptors of
        /// the user's terminal (a pty whose master is outside the tree)
        /// are recorded, for `lpm restore --shell-job` to put the
        /// restoring terminal in their place.
        #[arg(long)]
        shell_job: bool,
        /// Dump unix sockets connected to a peer outside the tree instead
        /// of refusing them: the restore connects each again to its
        /// peer's name (a new connection to whatever listens there then);
        /// one whose peer has no name, or with data queued, stays refused.
        #[arg(long)]
        ext_unix_sk: bool,
    },
    /// Apply the checkpoint's refusal rules to the running tree rooted at
    /// PID without stopping it; exit 0 only when nothing is refused.
    Inspect {
        /// Root of the tree.
        #[arg(long)]
        pid: i32,
        /// As for checkpoint: connections to peers outside the tree are
        /// not refused (a migration locks the network).
        #[arg(long)]
        tcp_established: bool,
        /// As for checkpoint: the user's terminal is not refused.
        #[arg(long)]
        shell_job: bool,
        /// As for checkpoint: unix peers outside the tree are external.
        #[arg(long)]
        ext_unix_sk: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Restore a tree from an image directory.
    Restore {
        /// Image directory.
        #[arg(long)]
        images: PathBuf,
        /// Exit once the tree runs, printing the root pid.
        #[arg(long)]
        detach: bool,
        /// Before the tree runs, read it back from the kernel and compare
        /// it with the image; any difference fails the restore, naming
        /// process, object and field.
        #[arg(long)]
        verify: bool,
        /// The image is a shell job's: its terminal descriptors open this
        /// command's own terminal, which takes the recorded termios, and
        /// the job gets its foreground if it had it (and lpm has it now).
        #[arg(long)]
        shell_job: bool,
    },
    /// Inspect images.
    Image {
        #[command(subcommand)]
        cmd: ImageCmd,
    },
    /// Run the demo: two hosts, a Python service with a connected client,
    /// moved h1 -> h2 -> h1 while it serves (--local: a checkpoint and
    /// restore on this machine only).
    Demo {
        /// Only checkpoint and restore a program here, without hosts.
        #[arg(long)]
        local: bool,
    },
    /// The lab: hosts on this machine for the demo and the tests.
    Lab {
        #[command(subcommand)]
        cmd: cluster::LabCmd,
    },
    /// Partitions: process trees in namespaces and a cgroup of their own.
    Partition {
        #[command(subcommand)]
        cmd: cluster::PartitionCmd,
    },
    /// Move a running partition to another host.
    Migrate(cluster::MigrateArgs),
    /// The site's certificate authority and operators' certificates.
    Pki {
        #[command(subcommand)]
        cmd: pki::PkiCmd,
    },
    /// Hosts: certificates, and the hosts the CLI knows (hosts.toml).
    Host {
        #[command(subcommand)]
        cmd: pki::HostCmd,
    },
    /// Migrations: list, show, stop, recover.
    Migration {
        #[command(subcommand)]
        cmd: migrations::MigrationCmd,
    },
    /// The console: one service for every host's partitions and
    /// migrations, with its HTTP API and history (docs/console.md).
    Console {
        #[command(subcommand)]
        cmd: console::ConsoleCmd,
    },
    /// Run the host agent (what `lpmd` runs; the lab starts it).
    #[command(hide = true)]
    Daemon(lpm_agent::daemon::DaemonArgs),
    /// The lazy fill of a partition that arrived, handed over by lpmd on
    /// standard input (lpmd runs it).
    #[command(hide = true)]
    Fill {
        /// The partition, for the log.
        #[arg(long)]
        partition: String,
    },
    /// Measure how fast a running process dirties its memory (what
    /// pre-copy has to keep up with), without stopping it for long.
    DirtyRate {
        /// The process.
        #[arg(long)]
        pid: i32,
        /// Length of one measurement, in milliseconds.
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        /// Number of measurements.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
    },
    /// Print a shell's completion script for lpm (bash: `lpm completions
    /// bash > /etc/bash_completion.d/lpm`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print lpm's manual page (roff) on standard output, or write one
    /// page per command into a directory.
    Man {
        /// Write lpm.1 and a page per subcommand (lpm-partition.1, ...)
        /// here instead.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Measure checkpoint and restore speed on real processes (`bench
    /// migrate`: live migration between the hosts of a lab of its own;
    /// `bench clients`: what a moving partition's clients feel).
    Bench {
        #[command(subcommand)]
        cmd: Option<BenchCmd>,
        /// Repetitions of each measurement (the median is printed).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Touched memory of the memory benchmark, in MiB.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Threads of the thread benchmark.
        #[arg(long, default_value_t = 1000)]
        threads: u32,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Live migration of partitions dirtying memory at set rates, held
    /// against the raw TCP bandwidth between the two hosts.
    Migrate(bench_migrate::MigrateBench),
    /// What the clients of a partition feel while it moves back and
    /// forth: downtime, each client's longest wait, retransmissions.
    Clients(bench_clients::ClientsBench),
    /// The console's planners (evacuate, balance, consolidate) on a
    /// simulated inventory: time, moves and load before and after.
    Plan(bench_plan::PlanBench),
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Print an image in readable form.
    Show {
        /// Image directory.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The agent logs what it does (to its log file in a lab); the CLI only
    // when asked.
    let default = if matches!(cli.cmd, Cmd::Daemon(_) | Cmd::Fill { .. }) { "info" } else { "off" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("LPM_LOG").unwrap_or_else(|_| default.into());
    // Colour only on a terminal: a log file or the journal gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lpm: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::Check { json } => check(json),
        Cmd::Checkpoint { pid, images, leave_running, tcp_established, shell_job, ext_unix_sk } => {
            let opts = lpm_engine::CheckpointOptions { leave_running, tcp_established, shell_job, ext_unix_sk };
            let s = lpm_engine::checkpoint(pid, &images, &opts).with_context(|| format!("checkpoint of pid {pid}"))?;
            eprintln!(
                "checkpointed {} processes, {} threads: {} pages ({} MiB), {} zero pages and {} shared copy-on-write in {:.1} ms (frozen {:.1} ms{})",
                s.processes,
                s.threads,
                s.pages,
                (s.pages * 4096) >> 20,
                s.zero_pages,
                s.shared_pages,
                s.total.as_secs_f64() * 1e3,
                s.frozen.as_secs_f64() * 1e3,
                if s.cgroup_frozen { ", by the cgroup freezer" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Inspect { pid, tcp_established, shell_job, ext_unix_sk, json } => inspect(pid, tcp_established, shell_job, ext_unix_sk, json),
        Cmd::Restore { images, detach, verify, shell_job } => {
            let r = lpm_engine::restore(&images, &lpm_engine::RestoreOptions { verify, shell_job, ..Default::default() })
                .with_context(|| format!("restore from {}", images.display()))?;
            eprintln!("restored {} processes, {} threads in {:.1} ms", r.processes, r.threads, r.elapsed.as_secs_f64() * 1e3);
            if detach {
                println!("{}", r.root_pid);
                return Ok(ExitCode::SUCCESS);
            }
            let status = lpm_sys::misc::wait_exit(r.root_pid).context("wait for the restored root")?;
            Ok(exit_code(status))
        }
        Cmd::Image { cmd: ImageCmd::Show { dir } } => {
            let t = lpm_image::read_tree(&dir)?;
            print!("{}", lpm_image::render(&t));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Demo { local: true } => demo(),
        Cmd::Demo { local: false } => cluster::demo(),
        Cmd::Lab { cmd } => cluster::lab(cmd),
        Cmd::Partition { cmd } => cluster::partition(cmd),
        Cmd::Migrate(a) => cluster::migrate(a),
        Cmd::Migration { cmd } => migrations::run(cmd),
        Cmd::Console { cmd } => console::run(cmd),
        Cmd::Pki { cmd } => pki::pki(cmd),
        Cmd::Host { cmd } => pki::host(cmd),
        Cmd::Daemon(a) => a.run().map(|_| ExitCode::SUCCESS),
        Cmd::Fill { partition } => lpm_agent::fill::run_child(&partition).map(|_| ExitCode::SUCCESS),
        Cmd::DirtyRate { pid, interval_ms, rounds } => {
            let mut t = lpm_engine::DirtyTracker::start(pid).with_context(|| format!("track writes of pid {pid}"))?;
            t.collect()?;
            for i in 1..=rounds {
                let start = std::time::Instant::now();
                std::thread::sleep(std::time::Duration::from_millis(interval_ms));
                let d = t.collect()?;
                let secs = start.elapsed().as_secs_f64();
                let mib = (d.pages() * 4096) as f64 / (1u64 << 20) as f64;
                println!("round {i}: {} pages written ({mib:.1} MiB, {:.1} MiB/s), {} new areas", d.pages(), mib / secs, d.new_areas.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Completions { shell } => {
            // Into a buffer first: clap_complete panics on a write error
            // (a closed pipe), which is an error like any other here.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "lpm", &mut script);
            std::io::Write::write_all(&mut std::io::stdout(), &script).context("write the completion script")?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Man { dir } => man(dir),
        Cmd::Bench { cmd: Some(BenchCmd::Migrate(a)), .. } => bench_migrate::run(&a).map(|_| ExitCode::SUCCESS),
        Cmd::Bench { cmd: Some(BenchCmd::Clients(a)), .. } => bench_clients::run(&a).map(|_| ExitCode::SUCCESS),
        Cmd::Bench { cmd: Some(BenchCmd::Plan(a)), .. } => bench_plan::run(&a).map(|_| ExitCode::SUCCESS),
        Cmd::Bench { cmd: None, runs, mib, threads } => bench::run(runs, mib, threads).map(|_| ExitCode::SUCCESS),
    }
}

/// `lpm man`: the page of lpm itself on stdout, or every page into `dir`.
fn man(dir: Option<PathBuf>) -> Result<ExitCode> {
    let cmd = Cli::command();
    match dir {
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()).context("write the manual page")?,
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir).with_context(|| format!("write the manual pages into {}", dir.display()))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `lpm inspect`: every refusal, then a summary line with the time taken.
fn inspect(pid: i32, tcp_established: bool, shell_job: bool, ext_unix_sk: bool, json: bool) -> Result<ExitCode> {
    let opts = lpm_engine::DumpOptions { tcp_established, shell_job, ext_unix_sk, ..Default::default() };
    let i = lpm_engine::inspect(pid, &opts).with_context(|| format!("inspect pid {pid}"))?;
    if json {
        let refusals: Vec<_> = i
            .refusals
            .iter()
            .map(|r| serde_json::json!({"pid": r.pid, "kind": r.kind, "what": r.what, "transient": r.transient}))
            .collect();
        let unreadable: Vec<String> = i.unreadable.iter().map(chain).collect();
        let v = serde_json::json!({
            "pid": pid, "passed": i.passed(), "processes": i.processes, "threads": i.threads,
            "descriptors": i.descriptors, "areas": i.areas, "elapsed_ms": i.elapsed.as_secs_f64() * 1e3,
            "refusals": refusals, "unreadable": unreadable,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for r in &i.refusals {
            println!("refused  {r}");
        }
        for e in &i.unreadable {
            println!("unread   {}", chain(e));
        }
        println!(
            "{}: {} processes, {} threads, {} descriptors, {} areas inspected in {:.2} ms without stopping the tree",
            if i.passed() { "passed" } else { "refused" },
            i.processes,
            i.threads,
            i.descriptors,
            i.areas,
            i.elapsed.as_secs_f64() * 1e3
        );
    }
    Ok(if i.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// An error with its causes, "a: b: c".
fn chain(e: &lpm_engine::EngineError) -> String {
    let mut out = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

fn exit_code(status: i32) -> ExitCode {
    if libc::WIFEXITED(status) {
        ExitCode::from(libc::WEXITSTATUS(status) as u8)
    } else {
        ExitCode::from(128 + libc::WTERMSIG(status) as u8)
    }
}

fn check(json: bool) -> Result<ExitCode> {
    let probes = lpm_sys::probe::probe_all();
    let missing: Vec<&str> = probes.iter().filter(|f| f.result.is_err()).map(|f| f.name).collect();
    // Not a reason to refuse a host: without it lpm works, more slowly.
    let degraded = lpm_sys::probe::probe_proc_events();
    let support = |s: &lpm_engine::support::Support| match s {
        lpm_engine::support::Support::Yes => "supported",
        lpm_engine::support::Support::Partly => "partly",
        lpm_engine::support::Support::Refused => "refused",
    };
    if json {
        let features: Vec<_> = probes
            .iter()
            .map(|f| match &f.result {
                Ok(detail) => serde_json::json!({"name": f.name, "ok": true, "detail": detail, "needed_for": f.needed_for}),
                Err(why) => serde_json::json!({"name": f.name, "ok": false, "detail": why, "needed_for": f.needed_for}),
            })
            .collect();
        let optional = match &degraded.result {
            Ok(detail) => serde_json::json!({"name": degraded.name, "ok": true, "detail": detail, "needed_for": degraded.needed_for}),
            Err(why) => serde_json::json!({"name": degraded.name, "ok": false, "detail": why, "needed_for": degraded.needed_for}),
        };
        let kinds: Vec<_> = lpm_engine::support::KINDS
            .iter()
            .map(|(kind, s, note)| serde_json::json!({"kind": kind, "support": support(s), "note": note}))
            .collect();
        let v = serde_json::json!({"features": features, "optional": [optional], "kinds": kinds, "missing": missing});
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let mut t = table::new(&["RESULT", "FEATURE", "DETAIL"]);
        for f in &probes {
            match &f.result {
                Ok(detail) => t.add_row(vec!["ok".to_string(), f.name.to_string(), detail.to_string()]),
                Err(why) => t.add_row(vec!["MISSING".to_string(), f.name.to_string(), format!("{why} (needed for {})", f.needed_for)]),
            };
        }
        match &degraded.result {
            Ok(detail) => t.add_row(vec!["ok".to_string(), degraded.name.to_string(), detail.to_string()]),
            Err(why) => {
                t.add_row(vec!["degraded".to_string(), degraded.name.to_string(), format!("{why} (needed for {})", degraded.needed_for)])
            }
        };
        table::print(t);
        println!("\nkinds of state (docs/support.md):");
        let mut t = table::new(&["SUPPORT", "KIND", "NOTE"]);
        for (kind, s, note) in lpm_engine::support::KINDS {
            t.add_row(vec![support(s), kind, note]);
        }
        table::print(t);
    }
    if missing.is_empty() {
        if !json {
            println!("\nevery kernel feature lpm needs is present");
        }
        Ok(ExitCode::SUCCESS)
    } else {
        bail!("missing kernel features: {}", missing.join(", "))
    }
}

/// The demo: a Python program with state in memory and a log it appends
/// to, checkpointed, killed and restored; its output shows it went on.
fn demo() -> Result<ExitCode> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let dir = std::env::temp_dir().join(format!("lpm-demo-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let res = demo_in(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    res
}

fn demo_in(dir: &std::path::Path) -> Result<ExitCode> {
    lpm_sys::misc::set_child_subreaper()?;
    let log = dir.join("counter.log");
    let script = r#"
import sys, time, hashlib
data = bytearray(64 << 20)
for i in range(0, len(data), 4096): data[i] = i // 4096 % 251
digest = hashlib.sha256(data).hexdigest()
n = 0
with open(sys.argv[1], "a", buffering=1) as log:
    while True:
        n += 1
        ok = hashlib.sha256(data).hexdigest() == digest if n % 50 == 0 else True
        log.write(f"tick {n} memory {'intact' if ok else 'CORRUPT'}\n")
        time.sleep(0.02)
"#;
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("start python3")?;
    let pid = child.id() as i32;
    let images = dir.join("images");
    let result = (|| -> Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        println!("== a Python program (pid {pid}) holds 64 MiB and counts into {}", log.display());
        let last = |n: usize| -> String {
            let s = std::fs::read_to_string(&log).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        };
        println!("{}", last(2));
        let s = lpm_engine::checkpoint(pid, &images, &lpm_engine::CheckpointOptions::default())?;
        let _ = child.wait();
        println!(
            "== checkpointed and killed: {} pages saved, {} zero pages, frozen {:.1} ms",
            s.pages,
            s.zero_pages,
            s.frozen.as_secs_f64() * 1e3
        );
        let before = std::fs::read_to_string(&log)?.lines().count();
        std::thread::sleep(std::time::Duration::from_millis(500));
        let still = std::fs::read_to_string(&log)?.lines().count();
        println!("== while it is down the log stays at {before} lines ({still} after 0.5 s)");
        let r = lpm_engine::restore(&images, &lpm_engine::RestoreOptions::default())?;
        println!("== restored as pid {} in {:.1} ms", r.root_pid, r.elapsed.as_secs_f64() * 1e3);
        std::thread::sleep(std::time::Duration::from_millis(1500));
        println!("{}", last(3));
        let after = std::fs::read_to_string(&log)?.lines().count();
        lpm_sys::misc::kill(r.root_pid, libc::SIGKILL);
        let _ = lpm_sys::misc::wait_exit(r.root_pid);
        if after <= still || std::fs::read_to_string(&log)?.contains("CORRUPT") {
            bail!("the restored program did not continue intact");
        }
        println!("== it went on counting from where it stopped, memory intact");
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result.map(|_| ExitCode::SUCCESS)
}
