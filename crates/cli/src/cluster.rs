//! The cluster commands: the lab of hosts, partitions, migrations and the
//! migration demo. The CLI finds the lab from its state directory
//! (`LPM_LAB`, default /run/lpm/lab) and talks to each host's lpmd over
//! its control socket, authenticated with the lab's key.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use lpm_agent::api::{MigrateRequest, PartitionInfo, Progress, Request, Response};
use lpm_agent::client::{read_key, Client};
use lpm_host::cgroup::Layout;
use lpm_host::checks::Check;
use lpm_host::lab::{Lab, LabOptions};
use lpm_host::partition::PartitionSpec;

/// The lab's state directory.
pub fn lab_dir() -> PathBuf {
    std::env::var_os("LPM_LAB").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/run/lpm/lab"))
}

/// `lpm lab ...`
#[derive(Subcommand)]
pub enum LabCmd {
    /// Create the hosts (network namespaces with an lpmd each), the client
    /// namespace and the networks joining them.
    Up {
        /// Number of hosts (h1..hN).
        #[arg(long, default_value_t = 2)]
        hosts: usize,
        /// The partition network.
        #[arg(long, default_value = "10.213.1.0/24")]
        subnet: String,
    },
    /// Run a command in a host's or the client's network namespace.
    Exec {
        /// h1..hN or client.
        name: String,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Show the lab.
    Status,
    /// Tear everything down (also after a crash).
    Down,
}

/// `lpm partition ...`
#[derive(Subcommand)]
pub enum PartitionCmd {
    /// Create a partition on a host and start it.
    Create(CreateArgs),
    /// Partitions of every host.
    List,
    /// One partition.
    Show {
        /// The partition.
        name: String,
    },
    /// Stop a partition's processes.
    Stop {
        /// The partition.
        name: String,
    },
    /// Start a stopped partition.
    Start {
        /// The partition.
        name: String,
    },
    /// Stop and remove a partition.
    Delete {
        /// The partition.
        name: String,
    },
    /// The partition's console output.
    Logs {
        /// The partition.
        name: String,
    },
}

/// `lpm partition create`
#[derive(Args)]
pub struct CreateArgs {
    /// Partition name.
    pub name: String,
    /// Host to run it on.
    #[arg(long)]
    pub host: String,
    /// Memory limit (512M, 2G, bytes).
    #[arg(long)]
    pub memory: Option<String>,
    /// CPU limit in CPUs (1.5).
    #[arg(long, allow_negative_numbers = true)]
    pub cpus: Option<f64>,
    /// Real-time budget: microseconds of every second the partition's
    /// SCHED_FIFO/SCHED_RR threads may run (none by default: no thread can
    /// be made real-time).
    #[arg(long)]
    pub rt_runtime_us: Option<u64>,
    /// Address on the partition network (ADDR/PREFIX); one is picked when absent.
    #[arg(long)]
    pub ip: Option<String>,
    /// MAC address; derived from the name when absent.
    #[arg(long)]
    pub mac: Option<String>,
    /// Shared-storage directories the partition uses.
    #[arg(long = "volume")]
    pub volumes: Vec<PathBuf>,
    /// A capability its processes keep beyond the default set
    /// (CAP_NET_ADMIN, SYS_PTRACE, ALL); repeatable.
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// The program and its arguments.
    #[arg(last = true, required = true)]
    pub cmd: Vec<String>,
}

/// `lpm migrate`
#[derive(Args)]
pub struct MigrateArgs {
    /// The partition.
    pub name: String,
    /// Target host.
    #[arg(long)]
    pub to: String,
    /// Downtime budget in milliseconds. A stop that takes longer still
    /// completes the move: the outcome says "completed over budget", by
    /// how much and in which phase of the stop, and a warning is printed.
    #[arg(long, default_value_t = 50)]
    pub max_downtime: u64,
    /// Exit with status 3 when the move completed but
    /// its stop took longer than --max-downtime (the partition runs on
    /// the target all the same).
    #[arg(long)]
    pub strict_downtime: bool,
    /// Pre-copy time limit in seconds.
    #[arg(long, default_value_t = 120)]
    pub max_time: u64,
    /// Switch over at the time limit instead of aborting.
    #[arg(long)]
    pub force: bool,
    /// Parallel streams for pages.
    #[arg(long, default_value_t = 1)]
    pub streams: u32,
    /// Compress pages: "zstd" (or "zstd:LEVEL").
    #[arg(long)]
    pub compress: Option<String>,
    /// Run the validation only: print every check; exit 0 only when all
    /// pass.
    #[arg(long)]
    pub validate_only: bool,
    /// Print the report (or the checks) as JSON.
    #[arg(long)]
    pub json: bool,
    /// On Ctrl-C, stop the migration without asking.
    #[arg(long)]
    pub yes: bool,
}

fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M') => (&s[..s.len() - 1], 1 << 20),
        Some('G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: f64 = num.parse().map_err(|_| anyhow!("bad size {s:?} (use 512M, 2G or bytes)"))?;
    if n <= 0.0 {
        bail!("bad size {s:?}: must be positive");
    }
    Ok((n * mul as f64) as u64)
}

/// The zstd level of `--compress zstd[:LEVEL]` (1 when not given), within
/// the levels zstd takes (an unknown level would make every frame go
/// uncompressed, silently).
fn parse_compress(s: &str) -> Result<i32> {
    let level = match s.split_once(':') {
        None if s == "zstd" => 1,
        Some(("zstd", l)) => l.parse().map_err(|_| anyhow!("--compress {s}: the zstd level {l:?} is not a whole number"))?,
        _ => bail!("--compress {s}: unknown compression (only zstd or zstd:LEVEL)"),
    };
    let range = zstd::compression_level_range();
    if !range.contains(&level) {
        bail!("--compress {s}: zstd levels are {} to {}", range.start(), range.end());
    }
    Ok(level)
}

/// Most page streams a migration may ask for: each is a thread and a TCP
/// connection on both hosts, and more than the CPUs of a host gain
/// nothing.
const MAX_STREAMS: u32 = 64;

/// Refuses `lpm migrate` arguments no migration can honour, naming the
/// argument and why; before any host is asked.
fn check_migrate_args(a: &MigrateArgs) -> Result<()> {
    if a.streams == 0 || a.streams > MAX_STREAMS {
        bail!("--streams {}: pages need 1 to {MAX_STREAMS} streams", a.streams);
    }
    if a.max_downtime == 0 {
        bail!("--max-downtime 0: no migration can stop a partition for 0 ms (the stop alone takes milliseconds)");
    }
    if a.max_time == 0 {
        bail!("--max-time 0: pre-copy needs time to send the memory once");
    }
    if let Some(c) = &a.compress {
        parse_compress(c)?;
    }
    Ok(())
}

/// The lab as the CLI sees it.
pub(crate) struct Cluster {
    pub(crate) lab: Lab,
    key: lpm_wire::Key,
}

impl Cluster {
    pub(crate) fn open() -> Result<Cluster> {
        let dir = lab_dir();
        let lab = Lab::load(&dir).with_context(|| format!("no lab at {} (run `lpm lab up`, or set LPM_LAB)", dir.display()))?;
        let key = read_key(&lab.key_path())?;
        Ok(Cluster { lab, key })
    }

    /// Every partition of every host as (host, spec).
    fn specs(&self) -> Result<Vec<(String, PartitionSpec)>> {
        Ok(self
            .all()
            .context("list the partitions of every host (a name, address and MAC must be unique across them)")?
            .into_iter()
            .map(|p| (p.host, p.spec))
            .collect())
    }

    pub(crate) fn client(&self, host: &str) -> Result<Client> {
        let h = self.lab.host(host).ok_or_else(|| {
            let names: Vec<&str> = self.lab.hosts().iter().map(|h| h.name.as_str()).collect();
            anyhow!("no host {host:?} in the lab (hosts: {})", names.join(", "))
        })?;
        Client::connect(&h.name, &h.control, &self.key)
    }

    /// Every partition of every host.
    fn all(&self) -> Result<Vec<PartitionInfo>> {
        let mut out = Vec::new();
        for (host, listed) in self.each() {
            out.extend(listed.with_context(|| format!("host {host}"))?);
        }
        Ok(out)
    }

    /// Each host's partitions, or why the host did not answer; the hosts
    /// asked at once, so that one that hangs delays the others by nothing.
    fn each(&self) -> Vec<(String, Result<Vec<PartitionInfo>>)> {
        let ask = |host: &str| -> Result<Vec<PartitionInfo>> {
            match self.client(host)?.call(&Request::List)? {
                Response::Partitions(p) => Ok(p),
                other => bail!("unexpected answer {other:?}"),
            }
        };
        std::thread::scope(|s| {
            let asked: Vec<_> = self.lab.hosts().iter().map(|h| (h.name.clone(), s.spawn(|| ask(&h.name)))).collect();
            asked
                .into_iter()
                .map(|(host, t)| {
                    let listed = t.join().unwrap_or_else(|_| Err(anyhow!("the thread asking it panicked")));
                    (host, listed)
                })
                .collect()
        })
    }

    /// The host a partition is on; a host that does not answer is named
    /// when the partition is on none of those that do.
    fn locate(&self, name: &str) -> Result<String> {
        let mut unreachable = Vec::new();
        for (host, listed) in self.each() {
            match listed {
                Ok(parts) => {
                    if let Some(p) = parts.into_iter().find(|p| p.spec.name == name) {
                        return Ok(p.host);
                    }
                }
                Err(e) => unreachable.push(format!("{host} ({e:#})")),
            }
        }
        if unreachable.is_empty() {
            bail!("no partition {name:?} on any host")
        }
        bail!("no partition {name:?} on the hosts that answered; unreachable: {}", unreachable.join(", "))
    }
}

fn print_partition(p: &PartitionInfo) {
    println!(
        "{:16} {:4} {:10} {:18} {:>8} {}",
        p.spec.name,
        p.host,
        p.state,
        p.spec.ip.clone().unwrap_or_else(|| "-".into()),
        p.memory_current.map(|m| format!("{}M", m >> 20)).unwrap_or_else(|| "-".into()),
        p.spec.command.join(" ")
    );
}

/// The lab runs this very binary as each host's agent (`lpm daemon`, the
/// same code as `lpmd`), so a lab works from a plain `cargo run`.
fn agent_options() -> Result<LabOptions> {
    let mut opts = LabOptions::new(std::env::current_exe().context("find the lpm binary")?);
    opts.lpmd_args = vec!["daemon".into()];
    Ok(opts)
}

/// Runs `lpm lab ...`.
pub fn lab(cmd: LabCmd) -> Result<ExitCode> {
    let dir = lab_dir();
    match cmd {
        LabCmd::Up { hosts, subnet } => {
            let mut opts = agent_options()?;
            opts.hosts = hosts;
            opts.subnet = subnet;
            let lab = Lab::up(&dir, &opts).context("lab up")?;
            for h in lab.hosts() {
                println!("{}  netns {}  mover {}", h.name, h.netns, h.listen);
            }
            println!("client  netns {}  {}", lab.client().netns, lab.client().addr);
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Exec { name, cmd } => {
            let lab = Lab::load(&dir)?;
            let st = lab.exec(&name, &cmd)?;
            Ok(ExitCode::from(st.code().unwrap_or(1) as u8))
        }
        LabCmd::Status => {
            let c = Cluster::open()?;
            for h in c.lab.hosts() {
                let ok = c.client(&h.name).and_then(|mut cl| cl.call(&Request::Ping)).is_ok();
                println!("{}  {}  lpmd {}", h.name, h.listen, if ok { "up" } else { "DOWN" });
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Down => {
            Lab::down(&dir).context("lab down")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `lpm partition ...`.
pub fn partition(cmd: PartitionCmd) -> Result<ExitCode> {
    let c = Cluster::open()?;
    match cmd {
        PartitionCmd::Create(a) => create(&c, a)?,
        PartitionCmd::List => {
            // A host that does not answer is listed as such, the others'
            // partitions all the same; the exit status says the list is
            // not whole.
            let mut unreachable = Vec::new();
            for (host, listed) in c.each() {
                match listed {
                    Ok(parts) => parts.iter().for_each(print_partition),
                    Err(e) => {
                        println!("{:16} {host:4} {:10} {e:#}", "-", "unreachable");
                        unreachable.push(format!("{host} ({e:#})"));
                    }
                }
            }
            if !unreachable.is_empty() {
                bail!("hosts that did not answer: {}", unreachable.join(", "));
            }
        }
        PartitionCmd::Show { name } => {
            let host = c.locate(&name)?;
            match c.client(&host)?.call(&Request::Show(name))? {
                Response::Partition(p) => println!("{}", serde_json::to_string_pretty(&p)?),
                other => bail!("unexpected answer {other:?}"),
            }
        }
        PartitionCmd::Stop { name } => {
            let host = c.locate(&name)?;
            c.client(&host)?.call(&Request::Stop(name))?;
        }
        PartitionCmd::Start { name } => {
            let host = c.locate(&name)?;
            c.client(&host)?.call(&Request::Start(name))?;
        }
        PartitionCmd::Delete { name } => {
            let hosts: Vec<String> = c.specs()?.into_iter().filter(|(_, s)| s.name == name).map(|(h, _)| h).collect();
            match hosts.as_slice() {
                [] => bail!("no partition {name:?} on any host"),
                [host] => {
                    c.client(host)?.call(&Request::Delete(name.clone()))?;
                    c.lab.release_owner(&name)?;
                }
                // Partitions of one name share their files on shared
                // storage (found by name): deleting one would remove the
                // other's console log.
                _ => bail!(
                    "partition {name} exists on {}: they share {name}'s files on shared storage, which a delete removes; \
                     stop it instead, or delete all of them",
                    hosts.join(" and ")
                ),
            }
        }
        PartitionCmd::Logs { name } => {
            let host = c.locate(&name)?;
            match c.client(&host)?.call(&Request::Logs { name, max_bytes: 1 << 20 })? {
                Response::Logs(t) => print!("{t}"),
                other => bail!("unexpected answer {other:?}"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `lpm partition create`: the spec's fields, then every check against
/// the lab (name, address and MAC unique across the hosts, the address in
/// the partition network and free, the limits within what the host
/// allows), all reported with their cause when any fails; the address is
/// recorded in the lab before the host is asked, and given back if the
/// host refuses.
fn create(c: &Cluster, a: CreateArgs) -> Result<()> {
    let memory = a.memory.as_deref().map(parse_size).transpose()?;
    let mut spec = PartitionSpec {
        name: a.name.clone(),
        command: a.cmd,
        memory,
        cpus: a.cpus,
        rt_runtime_us: a.rt_runtime_us,
        ip: a.ip,
        mac: a.mac,
        volumes: a.volumes,
        isolation: lpm_host::isolation::Isolation { cap_add: a.cap_add },
    };
    spec.validate().context("partition spec")?;
    c.lab.host(&a.host).ok_or_else(|| anyhow!("no host {:?} in the lab", a.host))?;
    let others = c.specs()?;
    // Addresses of partitions the lab has no record of (made without the
    // lab) are recorded now, so the allocator passes over them too.
    for (_, o) in &others {
        if let Ok(Some((ip, prefix))) = o.ipv4() {
            let _ = c.lab.reserve_ip(ip, prefix, &o.name);
        }
    }
    let mut checks = lpm_host::checks::uniqueness(&spec, &others);
    if let Some((ip, prefix)) = spec.ipv4()? {
        checks.push(match c.lab.check_ip(ip, prefix) {
            Ok(()) => Check::pass("subnet", format!("{ip}/{prefix} is in the partition network")),
            Err(e) => Check::fail("subnet", e.to_string()),
        });
    }
    // The lab's hosts share this machine: their cgroups are read here.
    let room = Layout::current()?.headroom(&format!("{}/{}", c.lab.prefix(), a.host)).context("read the host's cgroups")?;
    checks.extend(lpm_host::checks::fits(&spec, &a.host, &room));
    let failed: Vec<String> = checks.iter().filter(|ch| !ch.ok).map(|ch| format!("check {}: {}", ch.name, ch.detail)).collect();
    if !failed.is_empty() {
        bail!("partition {} refused:\n  {}", spec.name, failed.join("\n  "));
    }
    match spec.ipv4()? {
        Some((ip, prefix)) => c.lab.reserve_ip(ip, prefix, &spec.name)?,
        None => spec.ip = Some(format!("{}/24", c.lab.allocate_ip(&spec.name)?)),
    }
    let res = c.client(&a.host).and_then(|mut cl| cl.call(&Request::Create(spec.clone())));
    match res {
        Ok(Response::Partition(p)) => print_partition(&p),
        other => {
            c.lab.release_owner(&spec.name)?;
            match other {
                Err(e) => return Err(e),
                Ok(r) => bail!("unexpected answer {r:?}"),
            }
        }
    }
    Ok(())
}

fn progress_line(p: &Progress) -> String {
    match p.phase.as_str() {
        "precopy" => format!(
            "[{}] round {:>2}  dirty {:>8} pages  sent {:>8.1} MiB  {:>7.1} MiB/s{}",
            p.phase,
            p.round,
            p.dirty_pages,
            p.sent_bytes as f64 / (1 << 20) as f64,
            p.rate / (1 << 20) as f64,
            if p.throttle > 0.0 { format!("  throttle {:.0}%", p.throttle * 100.0) } else { String::new() }
        ),
        _ => format!("[{}] {}", p.phase, p.note),
    }
}

/// What `lpm migrate` ends with.
pub(crate) enum Migrated {
    /// The report of a completed migration.
    Report(Box<lpm_migrate::report::Report>),
    /// The checks of `--validate-only`.
    Checks(Vec<lpm_agent::api::Check>),
}

/// The migration under way, once its source named it: where a Ctrl-C
/// sends its stop.
type Current = std::sync::Arc<std::sync::Mutex<Option<(String, String)>>>;

/// Migrates (or only validates).
pub(crate) fn migrate_with(c: &Cluster, a: &MigrateArgs, quiet: bool, current: &Current) -> Result<Migrated> {
    let source = c.locate(&a.name)?;
    let target = c.lab.host(&a.to).ok_or_else(|| anyhow!("no host {:?} in the lab", a.to))?;
    let req = MigrateRequest {
        name: a.name.clone(),
        target: a.to.clone(),
        target_addr: target.listen.to_string(),
        max_downtime_ms: a.max_downtime,
        max_total_s: a.max_time,
        force: a.force,
        streams: a.streams,
        compress: a.compress.as_deref().map(parse_compress).transpose()?,
        validate_only: a.validate_only,
    };
    let tty = std::io::stderr().is_terminal();
    let mut last_len = 0;
    let res = c.client(&source)?.call_with_progress(&Request::Migrate(req), |p| {
        if !p.id.is_empty() {
            *current.lock().unwrap_or_else(|e| e.into_inner()) = Some((source.clone(), p.id.clone()));
        }
        if quiet {
            return;
        }
        let line = progress_line(p);
        if tty {
            eprint!("\r{line:<last_len$}");
            last_len = line.len();
            let _ = std::io::stderr().flush();
        } else {
            eprintln!("{line}");
        }
    });
    if tty && !quiet {
        eprintln!();
    }
    match res? {
        Response::Report(r) => Ok(Migrated::Report(r)),
        Response::Validation(checks) => Ok(Migrated::Checks(checks)),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// Ctrl-C on `lpm migrate`: asks whether to stop the migration (or stops
/// it with `--yes`); the migration itself runs in the source's lpmd and
/// goes on without this command otherwise. A thread of its own waits for
/// the signal, blocked in every other thread.
fn watch_interrupt(current: Current, yes: bool) -> Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.thread_block().context("block SIGINT")?;
    std::thread::spawn(move || loop {
        if set.wait().is_err() {
            return;
        }
        let Some((host, id)) = current.lock().unwrap_or_else(|e| e.into_inner()).clone() else {
            eprintln!("\nlpm: interrupted before the migration began");
            std::process::exit(130);
        };
        if !yes {
            let asked = std::fs::OpenOptions::new().read(true).write(true).open("/dev/tty").ok().filter(|_| std::io::stdin().is_terminal());
            let Some(mut tty) = asked else {
                eprintln!("\nlpm: migration {id} goes on without this command; stop it with `lpm migration stop {id}` (or use --yes)");
                std::process::exit(130);
            };
            let _ = write!(tty, "\nstop migration {id}? before go the partition keeps running on {host} [y/N] ");
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(&tty), &mut line);
            if !matches!(line.trim(), "y" | "Y" | "yes") {
                eprintln!("the migration goes on");
                continue;
            }
        }
        eprintln!("\nstopping migration {id}");
        match Cluster::open().and_then(|c| c.client(&host)).and_then(|mut cl| cl.call(&Request::MigrationStop(id.clone()))) {
            // The migration's own answer follows on the first connection.
            Ok(_) => {}
            Err(e) => eprintln!("lpm: stop migration {id}: {e:#}"),
        }
    });
    Ok(())
}

/// The exit status of `lpm migrate --strict-downtime` when the partition
/// moved but its stop took longer than `--max-downtime` (1 is any error,
/// 2 a usage error).
pub const EXIT_OVER_BUDGET: u8 = 3;

/// Runs `lpm migrate`.
pub fn migrate(a: MigrateArgs) -> Result<ExitCode> {
    check_migrate_args(&a)?;
    let c = Cluster::open()?;
    let current = Current::default();
    if !a.validate_only {
        watch_interrupt(current.clone(), a.yes)?;
    }
    match migrate_with(&c, &a, a.json, &current)? {
        Migrated::Report(r) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", lpm_migrate::report::render(&r));
            }
            if let Some(line) = r.overrun_line() {
                // On stderr, so that --json's output stays one document.
                eprintln!("lpm: warning: migration {} of {} completed over budget: {line}", r.id, r.partition);
                if a.strict_downtime {
                    return Ok(ExitCode::from(EXIT_OVER_BUDGET));
                }
            }
        }
        Migrated::Checks(checks) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&checks)?);
            } else {
                for ch in &checks {
                    println!("{:4} {:9} {}", if ch.ok { "ok" } else { "FAIL" }, ch.name, ch.detail);
                }
            }
            if checks.iter().any(|c| !c.ok) {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Tears the demo's lab down however the demo ends.
struct LabGuard(PathBuf);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = Lab::down(&self.0) {
            eprintln!("lpm: lab down: {e:#}");
        }
    }
}

/// `lpm demo`: two hosts, a Python service with state in memory, a client
/// checking every answer, the service moved h1 → h2 → h1 while it serves.
pub fn demo() -> Result<ExitCode> {
    for tool in ["ip", "setsid", "python3"] {
        let found = std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
        if !found {
            bail!("the demo needs {tool}, which is not installed: run ./scripts/setup.sh first");
        }
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let dir = std::env::temp_dir().join(format!("lpm-demo-lab-{}-{nanos}", std::process::id()));
    // The demo's own lab: commands of this process find it, nobody else's.
    std::env::set_var("LPM_LAB", &dir);
    let mut opts = agent_options()?;
    opts.hosts = 2;
    println!("== lab: two hosts (h1, h2) and a client, in network namespaces of their own");
    let lab = Lab::up(&dir, &opts).context("lab up")?;
    let _guard = LabGuard(dir.clone());
    let key = read_key(&lab.key_path())?;
    let c = Cluster { lab, key };
    let script = dir.join("kv_service.py");
    std::fs::write(&script, include_str!("../demo/kv_service.py"))?;
    let client_py = dir.join("kv_client.py");
    std::fs::write(&client_py, include_str!("../demo/kv_client.py"))?;
    let ip = c.lab.allocate_ip("kv")?;
    let spec = PartitionSpec {
        name: "kv".into(),
        command: vec!["python3".into(), script.display().to_string(), "7000".into(), "64".into()],
        memory: Some(512 << 20),
        cpus: Some(1.0),
        rt_runtime_us: None,
        ip: Some(format!("{ip}/24")),
        mac: None,
        volumes: vec![dir.clone()],
        isolation: Default::default(),
    };
    match c.client("h1")?.call(&Request::Create(spec))? {
        Response::Partition(p) => println!("== partition kv on h1: {} (pid {:?}), python3 kv_service.py holding 64 MiB", ip, p.pid),
        other => bail!("unexpected answer {other:?}"),
    }
    let client_ns = c.lab.client().netns.clone();
    let client = Command::new("ip")
        .args(["netns", "exec", &client_ns, "python3"])
        .arg(&client_py)
        .args([&ip.to_string(), "7000", "600"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("start the client")?;
    std::thread::sleep(Duration::from_secs(2));
    println!("== a client in the client namespace sends numbered requests and checks every answer");
    let mut reports = Vec::new();
    let res = (|| -> Result<()> {
        for to in ["h2", "h1"] {
            println!("== migrating kv to {to} while it serves");
            let a = MigrateArgs {
                name: "kv".into(),
                to: to.into(),
                max_downtime: 50,
                strict_downtime: false,
                max_time: 60,
                force: true,
                streams: 1,
                compress: None,
                validate_only: false,
                json: false,
                yes: false,
            };
            let t = Instant::now();
            let Migrated::Report(r) = migrate_with(&c, &a, false, &Current::default())? else { bail!("no report") };
            print!("{}", lpm_migrate::report::render(&r));
            println!("   ({:.2} s)", t.elapsed().as_secs_f64());
            reports.push(r);
            std::thread::sleep(Duration::from_secs(2));
        }
        Ok(())
    })();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(client.id() as i32), nix::sys::signal::Signal::SIGINT);
    let out = client.wait_with_output().context("wait for the client")?;
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    res?;
    println!("== client: {}", summary.trim());
    if !out.status.success() {
        bail!("the client saw a wrong answer or a broken connection");
    }
    println!("== kv moved h1 → h2 → h1; every answer was right and the connection stayed up");
    Ok(ExitCode::SUCCESS)
}
