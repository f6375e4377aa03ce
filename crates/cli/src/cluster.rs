//! The cluster commands: the lab of hosts, partitions, migrations and the
//! migration demo. The CLI finds its hosts in its hosts file (hosts.rs:
//! `LPM_CONFIG`, a lab's own when a lab is up (`LPM_LAB`, default
//! /run/lpm/lab), ~/.config/lpm/hosts.toml, /etc/lpm/hosts.toml) and
//! talks to each host's lpmd through its remote API, over mutual TLS
//! with the operator's certificate, as on real servers.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use lpm_agent::api::{MigrateRequest, PartitionInfo, Progress, Request, Response};
use lpm_agent::client::{operator_tls, Client, Remote, TlsConfig};
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
        /// Start the hosts' movers without TLS (plain frames, memory in
        /// clear), to measure what encryption costs.
        #[arg(long)]
        insecure: bool,
        /// Start a console beside the hosts (`lpm console serve` in the
        /// fabric namespace, the hosts registered) and make the lab's CLI
        /// go through it.
        #[arg(long)]
        console: bool,
    },
    /// Run a command in a host's or the client's network namespace.
    Exec {
        /// h1..hN or client.
        name: String,
        /// The command.
        #[arg(last = true, required = true)]
        cmd: Vec<String>,
    },
    /// Show the lab's hosts and whether their lpmd answers.
    Status {
        /// Print it as JSON: [{"host", "mover", "netns", "up"}].
        #[arg(long)]
        json: bool,
    },
    /// Tear everything down (also after a crash).
    Down,
}

/// `lpm partition ...`
#[derive(Subcommand)]
pub enum PartitionCmd {
    /// Create a partition on a host and start it.
    Create(CreateArgs),
    /// Partitions of every host.
    List {
        /// Print them as JSON: {"partitions": [...], "unreachable":
        /// [{"host", "error"}]}.
        #[arg(long)]
        json: bool,
    },
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
    /// The partition's console output (its stdout and stderr, kept on
    /// shared storage).
    Logs {
        /// The partition.
        name: String,
        /// Only the last N lines.
        #[arg(long, short = 'n', value_name = "N")]
        tail: Option<u64>,
        /// Keep printing what the partition writes, also after it moved
        /// to another host, until it stops (or Ctrl-C).
        #[arg(long, short = 'f')]
        follow: bool,
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
    /// Runs its processes in a user namespace of their own whose root is
    /// an unprivileged id range of the host (picked by the host and kept
    /// in the spec). Such a partition is not migrated yet.
    #[arg(long)]
    pub userns: bool,
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

/// The hosts as the CLI sees them: its hosts file, and the lab when one
/// is up (which allocates partition addresses and checks a host's room).
pub(crate) struct Cluster {
    lab: Option<Lab>,
    pub(crate) hosts: lpm_host::hosts::HostsFile,
    path: PathBuf,
    /// The operator's TLS configuration, or why there is none.
    tls: std::result::Result<TlsConfig, String>,
    /// The console the commands go through, when one is configured.
    pub(crate) console: Option<lpm_console::client::ConsoleClient>,
}

impl Cluster {
    pub(crate) fn open() -> Result<Cluster> {
        Cluster::with_hosts_file(&crate::hosts::path(None)?)
    }

    /// The hosts of the file at `path` (and the lab, when one is up).
    pub(crate) fn with_hosts_file(path: &Path) -> Result<Cluster> {
        let dir = lab_dir();
        let lab = if dir.join(lpm_host::lab::STATE_FILE).exists() { Some(Lab::load(&dir)?) } else { None };
        let mut hosts = lpm_host::hosts::HostsFile::load(path)?;
        let console = crate::console::configured(&hosts, path)?;
        if let Some(con) = &console {
            // The console's hosts are the cluster's: names and movers.
            let listed: Vec<serde_json::Value> = con.call("GET", "/v1/hosts", None).context("list the console's hosts")?;
            for h in listed {
                let (Some(name), Some(api)) = (h["name"].as_str(), h["api"].as_str().and_then(|a| a.parse().ok())) else { continue };
                let mover = h["mover"].as_str().and_then(|m| m.parse().ok());
                hosts.hosts.insert(name.to_string(), lpm_host::hosts::HostEntry { api, mover });
            }
        }
        if hosts.hosts.is_empty() {
            bail!(
                "no hosts in {} and no lab at {}: add hosts with `lpm host add NAME ADDR`, run `lpm lab up`, or set LPM_CONFIG or LPM_LAB",
                path.display(),
                dir.display()
            );
        }
        let tls = match &hosts.operator {
            Some(op) => operator_tls(&op.ca, &op.cert, &op.key).map_err(|e| format!("{}: operator identity: {e:#}", path.display())),
            None => Err(format!("{} names no operator identity (`lpm host add NAME ADDR --ca CA --cert CERT --key KEY`)", path.display())),
        };
        Ok(Cluster { lab, hosts, path: path.to_path_buf(), tls, console })
    }

    /// The lab, for what only a lab has.
    pub(crate) fn lab(&self) -> Result<&Lab> {
        self.lab.as_ref().ok_or_else(|| anyhow!("no lab at {} (run `lpm lab up`, or set LPM_LAB)", lab_dir().display()))
    }

    /// The names of the hosts, in the file's order.
    pub(crate) fn names(&self) -> Vec<String> {
        self.hosts.hosts.keys().cloned().collect()
    }

    /// Host `name`'s mover address, where migrations to it go.
    fn mover(&self, name: &str) -> Result<std::net::SocketAddr> {
        Ok(self.hosts.get(name, &self.path)?.mover())
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

    /// Host `host`'s API: through the console when one is configured.
    pub(crate) fn client(&self, host: &str) -> Result<crate::console::HostCall> {
        match &self.console {
            Some(con) => {
                self.hosts.get(host, &self.path)?;
                Ok(crate::console::HostCall::Console { con: con.clone(), host: host.to_string(), direct: self.direct(host).ok() })
            }
            None => Ok(crate::console::HostCall::Direct(self.direct(host)?)),
        }
    }

    /// Host `host`'s API, straight.
    fn direct(&self, host: &str) -> Result<Client> {
        let h = self.hosts.get(host, &self.path)?;
        let tls = self.tls.clone().map_err(|e| anyhow!(e))?;
        Ok(Client::remote(host, Remote { addr: h.api, netns: self.hosts.netns.clone(), tls }))
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
    pub(crate) fn each(&self) -> Vec<(String, Result<Vec<PartitionInfo>>)> {
        let ask = |host: &str| -> Result<Vec<PartitionInfo>> {
            match self.client(host)?.call(&Request::List)? {
                Response::Partitions(p) => Ok(p),
                other => bail!("unexpected answer {other:?}"),
            }
        };
        std::thread::scope(|s| {
            let names = self.names();
            let asked: Vec<_> = names.into_iter().map(|h| (h.clone(), s.spawn(move || ask(&h)))).collect();
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

/// The partition table's header.
const PARTITION_HEADER: [&str; 6] = ["NAME", "HOST", "STATE", "ADDRESS", "MEMORY", "COMMAND"];

/// A partition as a row of the partition table; a stopped one's state
/// says how its init ended, when its host recorded it.
fn partition_row(p: &PartitionInfo) -> Vec<String> {
    let state = match &p.exit {
        Some(exit) => format!("{} ({exit})", p.state),
        None => p.state.clone(),
    };
    vec![
        p.spec.name.clone(),
        p.host.clone(),
        state,
        p.spec.ip.clone().unwrap_or_else(|| "-".into()),
        p.memory_current.map(crate::table::bytes).unwrap_or_else(|| "-".into()),
        crate::table::one_line(&p.spec.command.join(" ")),
    ]
}

/// Prints partitions as a table with its header.
fn print_partitions<'a>(parts: impl IntoIterator<Item = &'a PartitionInfo>) {
    let mut t = crate::table::new(&PARTITION_HEADER);
    for p in parts {
        t.add_row(partition_row(p));
    }
    crate::table::right(&mut t, 4);
    crate::table::print(t);
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
        LabCmd::Up { hosts, subnet, insecure, console } => {
            let mut opts = agent_options()?;
            opts.hosts = hosts;
            opts.subnet = subnet;
            opts.insecure = insecure;
            opts.console_args = console.then(|| vec!["console".into(), "serve".into()]);
            let lab = Lab::up(&dir, &opts).context("lab up")?;
            for h in lab.hosts() {
                println!("{}  netns {}  mover {}", h.name, h.netns, h.listen);
            }
            if let Some(c) = lab.console() {
                println!("console  {}  log {}", c.addr, c.log.display());
            }
            println!("client  netns {}  {}", lab.client().netns, lab.client().addr);
            Ok(ExitCode::SUCCESS)
        }
        LabCmd::Exec { name, cmd } => {
            let lab = Lab::load(&dir)?;
            let st = lab.exec(&name, &cmd)?;
            Ok(ExitCode::from(st.code().unwrap_or(1) as u8))
        }
        LabCmd::Status { json } => {
            let c = Cluster::open()?;
            let mut t = crate::table::new(&["HOST", "MOVER", "NETNS", "LPMD"]);
            let mut rows = Vec::new();
            for h in c.lab()?.hosts() {
                let up = c.client(&h.name).and_then(|mut cl| cl.call(&Request::Ping)).is_ok();
                t.add_row(vec![h.name.clone(), h.listen.to_string(), h.netns.clone(), if up { "up" } else { "DOWN" }.to_string()]);
                rows.push(serde_json::json!({"host": h.name, "mover": h.listen.to_string(), "netns": h.netns, "up": up}));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                crate::table::print(t);
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
        PartitionCmd::List { json } => {
            // A host that does not answer is listed as such, the others'
            // partitions all the same; the exit status says the list is
            // not whole.
            let mut t = crate::table::new(&PARTITION_HEADER);
            let mut listed = Vec::new();
            let mut unreachable = Vec::new();
            for (host, answer) in c.each() {
                match answer {
                    Ok(parts) => {
                        parts.iter().for_each(|p| {
                            t.add_row(partition_row(p));
                        });
                        listed.extend(parts);
                    }
                    Err(e) => {
                        t.add_row(vec!["-".to_string(), host.clone(), "unreachable".into(), "-".into(), "-".into(), format!("{e:#}")]);
                        unreachable.push((host, format!("{e:#}")));
                    }
                }
            }
            if json {
                let down: Vec<_> = unreachable.iter().map(|(h, e)| serde_json::json!({"host": h, "error": e})).collect();
                println!("{}", serde_json::to_string_pretty(&serde_json::json!({"partitions": listed, "unreachable": down}))?);
            } else {
                crate::table::right(&mut t, 4);
                crate::table::print(t);
            }
            if !unreachable.is_empty() {
                let names: Vec<String> = unreachable.iter().map(|(h, e)| format!("{h} ({e})")).collect();
                bail!("hosts that did not answer: {}", names.join(", "));
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
                    if let Some(lab) = &c.lab {
                        lab.release_owner(&name)?;
                    }
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
        PartitionCmd::Logs { name, tail: None, follow: false } => {
            let host = c.locate(&name)?;
            match c.client(&host)?.call(&Request::Logs { name, max_bytes: 1 << 20 })? {
                Response::Logs(t) => print!("{t}"),
                other => bail!("unexpected answer {other:?}"),
            }
        }
        PartitionCmd::Logs { name, tail, follow } => logs(&c, &name, tail, follow)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// How often `lpm partition logs --follow` asks for more when the last
/// answer had nothing new (what `tail -f` does without inotify; the log is
/// on shared storage, possibly another machine's).
const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

/// `lpm partition logs --tail N --follow`: the last lines, then what
/// follows as it is written. The partition is located again when its
/// host no longer has it (it moved); following ends when it is stopped
/// and everything it wrote is printed.
fn logs(c: &Cluster, name: &str, tail: Option<u64>, follow: bool) -> Result<()> {
    let mut host = c.locate(name)?;
    let mut client = c.client(&host)?;
    let mut offset = None;
    let mut out = std::io::stdout().lock();
    loop {
        let req = Request::LogsFrom { name: name.to_string(), offset, tail_lines: tail, max_bytes: 1 << 20 };
        let (text, end, state) = match client.call(&req) {
            Ok(Response::LogChunk { text, end, state }) => (text, end, state),
            Ok(other) => bail!("unexpected answer from {host}: {other:?}"),
            Err(e) if follow && format!("{e:#}").contains(&format!("no partition {name:?} on {host}")) => {
                // It left this host (a migration): ask where it is now;
                // its log is the same file on shared storage.
                host = c.locate(name).with_context(|| format!("partition {name} left {host}"))?;
                client = c.client(&host)?;
                continue;
            }
            Err(e) => return Err(e.context(format!("read partition {name}'s log on {host}"))),
        };
        out.write_all(text.as_bytes()).context("write the log")?;
        out.flush().context("write the log")?;
        offset = Some(end);
        if !follow || (text.is_empty() && state == "stopped") {
            return Ok(());
        }
        if text.is_empty() {
            std::thread::sleep(FOLLOW_INTERVAL);
        }
    }
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
        isolation: lpm_host::isolation::Isolation { cap_add: a.cap_add, userns: a.userns.then(lpm_host::isolation::UserNs::default) },
    };
    spec.validate().context("partition spec")?;
    c.hosts.get(&a.host, &c.path)?;
    let others = c.specs()?;
    // Addresses of partitions the lab has no record of (made without the
    // lab) are recorded now, so the allocator passes over them too.
    if let Some(lab) = &c.lab {
        for (_, o) in &others {
            if let Ok(Some((ip, prefix))) = o.ipv4() {
                let _ = lab.reserve_ip(ip, prefix, &o.name);
            }
        }
    }
    let mut checks = lpm_host::checks::uniqueness(&spec, &others);
    if let (Some((ip, prefix)), Some(lab)) = (spec.ipv4()?, &c.lab) {
        checks.push(match lab.check_ip(ip, prefix) {
            Ok(()) => Check::pass("subnet", format!("{ip}/{prefix} is in the partition network")),
            Err(e) => Check::fail("subnet", e.to_string()),
        });
    }
    // The lab's hosts share this machine: their cgroups are read here.
    // (Real hosts' room is checked by their lpmd when a partition moves.)
    if let Some(lab) = &c.lab {
        let room = Layout::current()?.headroom(&format!("{}/{}", lab.prefix(), a.host)).context("read the host's cgroups")?;
        checks.extend(lpm_host::checks::fits(&spec, &a.host, &room));
    }
    let failed: Vec<String> = checks.iter().filter(|ch| !ch.ok).map(|ch| format!("check {}: {}", ch.name, ch.detail)).collect();
    if !failed.is_empty() {
        bail!("partition {} refused:\n  {}", spec.name, failed.join("\n  "));
    }
    if let Some(lab) = &c.lab {
        match spec.ipv4()? {
            Some((ip, prefix)) => lab.reserve_ip(ip, prefix, &spec.name)?,
            None => spec.ip = Some(format!("{}/24", lab.allocate_ip(&spec.name)?)),
        }
    }
    let res = c.client(&a.host).and_then(|mut cl| cl.call(&Request::Create(spec.clone())));
    match res {
        Ok(Response::Partition(p)) => print_partitions([&*p]),
        other => {
            if let Some(lab) = &c.lab {
                lab.release_owner(&spec.name)?;
            }
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

/// The progress bar of `lpm migrate` on a terminal (indicatif): bytes
/// sent against an estimate of what is left to send (the partition's
/// memory before the first round, the sent bytes and the dirty pages
/// after each), with the percentage, and the time left at the measured
/// rate. The source reports once per pre-copy round, so the bar moves by
/// rounds; the spinner and the elapsed time show it is alive meanwhile.
struct MigrationBar {
    bar: indicatif::ProgressBar,
}

/// The bar for migrating partition `name` from `source`.
fn migration_bar(c: &Cluster, source: &str, name: &str) -> MigrationBar {
    // Only an estimate: a host that does not say leaves the bar to grow
    // with the first round.
    let memory = match c.client(source).and_then(|mut cl| cl.call(&Request::Show(name.to_string()))) {
        Ok(Response::Partition(p)) => p.memory_current.unwrap_or(0),
        _ => 0,
    };
    let bar = indicatif::ProgressBar::with_draw_target(Some(memory.max(1)), indicatif::ProgressDrawTarget::stderr());
    let style = indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {percent:>3}% {binary_bytes:>10} {wide_msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(200));
    MigrationBar { bar }
}

impl MigrationBar {
    fn update(&self, p: &Progress) {
        if p.phase != "precopy" {
            self.bar.set_message(format!("{}: {}", p.phase, p.note));
            return;
        }
        let left = p.dirty_pages * 4096;
        // Once a round is sent, what is left is its dirty pages.
        self.bar.set_length((p.sent_bytes + left).max(1));
        self.bar.set_position(p.sent_bytes);
        let eta = if p.rate > 0.0 { format!("ETA {:.1}s", left as f64 / p.rate) } else { "ETA -".into() };
        let throttle = if p.throttle > 0.0 { format!(", throttle {:.0}%", p.throttle * 100.0) } else { String::new() };
        self.bar.set_message(format!(
            "round {} {}/s, {} dirty pages, {eta}{throttle}",
            p.round,
            crate::table::bytes(p.rate as u64),
            p.dirty_pages
        ));
    }

    fn finish(self) {
        self.bar.finish_and_clear();
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
    let target_addr = c.mover(&a.to)?;
    let req = MigrateRequest {
        name: a.name.clone(),
        target: a.to.clone(),
        target_addr: target_addr.to_string(),
        max_downtime_ms: a.max_downtime,
        max_total_s: a.max_time,
        force: a.force,
        streams: a.streams,
        compress: a.compress.as_deref().map(parse_compress).transpose()?,
        validate_only: a.validate_only,
    };
    let tty = std::io::stderr().is_terminal();
    // A bar on a terminal; on anything else a line per progress message
    // (a log reads those, a bar's redraws would litter it).
    let bar = (tty && !quiet).then(|| migration_bar(c, &source, &a.name));
    let res = c.client(&source)?.call_with_progress(&Request::Migrate(req), |p| {
        if !p.id.is_empty() {
            *current.lock().unwrap_or_else(|e| e.into_inner()) = Some((source.clone(), p.id.clone()));
        }
        if quiet {
            return;
        }
        match &bar {
            Some(bar) => bar.update(p),
            None => eprintln!("{}", progress_line(p)),
        }
    });
    if let Some(bar) = bar {
        bar.finish();
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
                let mut t = crate::table::new(&["RESULT", "CHECK", "DETAIL"]);
                for ch in &checks {
                    t.add_row(vec![if ch.ok { "ok" } else { "FAIL" }, ch.name.as_str(), ch.detail.as_str()]);
                }
                crate::table::print(t);
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
    opts.console_args = Some(vec!["console".into(), "serve".into()]);
    println!("== lab: two hosts (h1, h2) and a client, in network namespaces of their own, and a console the demo goes through");
    let lab = Lab::up(&dir, &opts).context("lab up")?;
    let _guard = LabGuard(dir.clone());
    drop(lab);
    // The demo's lab registered its hosts: the demo reaches them as the
    // CLI does, through their remote API.
    let c = Cluster::open()?;
    let script = dir.join("kv_service.py");
    std::fs::write(&script, include_str!("../demo/kv_service.py"))?;
    let client_py = dir.join("kv_client.py");
    std::fs::write(&client_py, include_str!("../demo/kv_client.py"))?;
    let ip = c.lab()?.allocate_ip("kv")?;
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
    let client_ns = c.lab()?.client().netns.clone();
    // `ip netns exec`, as an operator would run the client (see Lab::exec).
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
