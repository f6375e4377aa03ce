//! lpmd: runs the partitions of one host, serves the control API on a unix
//! socket and the mover on TCP, both behind the lpm-wire handshake.
//!
//! lpmd is the parent of every partition's init (and a child subreaper, so
//! restored trees come back to it). Exits are noticed by polling each
//! init with a non-blocking waitpid: a blanket wait for any child would
//! steal the ptrace stops a checkpoint or restore on another thread waits
//! for.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use lpm_host::partition::{self, HostCtx, PartitionSpec, Plumbing};
use lpm_migrate::report::Report;
use lpm_wire::{Key, Role};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::api::{self, PartitionInfo, Request, Response};
use crate::migration;

/// lpmd's command line (also `lpm daemon`, so a lab started from a bare
/// `cargo run` finds its agent in the same binary).
#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// This host's name.
    #[arg(long)]
    pub host: String,
    /// State directory.
    #[arg(long)]
    pub dir: PathBuf,
    /// Mover address (ip:port).
    #[arg(long)]
    pub listen: SocketAddr,
    /// File holding the cluster's pre-shared key (64 hex digits).
    #[arg(long)]
    pub key: PathBuf,
    /// Control socket path.
    #[arg(long)]
    pub control: PathBuf,
    /// Partition bridge in this host's network namespace.
    #[arg(long, default_value = "lpmbr0")]
    pub bridge: String,
    /// Prefix of the names this host creates (network namespaces, cgroups).
    #[arg(long)]
    pub prefix: String,
    /// Shared storage every host sees at the same path, where partitions'
    /// console logs live (they move with the partition); the parent of
    /// --dir by default.
    #[arg(long)]
    pub shared: Option<PathBuf>,
}

/// The standalone `lpmd` parser.
#[derive(clap::Parser, Debug)]
#[command(name = "lpmd", version, about = "The lpm host agent")]
struct Standalone {
    #[command(flatten)]
    args: DaemonArgs,
}

impl DaemonArgs {
    /// Parses lpmd's own command line.
    pub fn parse() -> DaemonArgs {
        <Standalone as clap::Parser>::parse().args
    }

    /// Reads the key and runs the agent until SIGTERM.
    pub fn run(self) -> Result<()> {
        let key = crate::client::read_key(&self.key)?;
        let shared = match self.shared {
            Some(s) => s,
            None => self.dir.parent().map(Path::to_path_buf).unwrap_or_else(|| self.dir.clone()),
        };
        run(Options {
            shared,
            host: self.host,
            dir: self.dir,
            listen: self.listen,
            key,
            control: self.control,
            bridge: self.bridge,
            prefix: self.prefix,
        })
    }
}

/// How lpmd is set up.
pub struct Options {
    /// Shared storage (console logs of partitions).
    pub shared: PathBuf,
    /// This host's name (h1, ...).
    pub host: String,
    /// State directory of this host.
    pub dir: PathBuf,
    /// Mover address to listen on.
    pub listen: SocketAddr,
    /// The cluster key.
    pub key: Key,
    /// Control socket path.
    pub control: PathBuf,
    /// The partition bridge in this host's network namespace.
    pub bridge: String,
    /// Prefix of every name this lab creates (netns, cgroups).
    pub prefix: String,
}

/// A partition this host holds.
pub(crate) struct Entry {
    pub spec: PartitionSpec,
    pub plumbing: Plumbing,
    /// Host pid of the init, while it runs here.
    pub pid: Option<i32>,
    /// A migration owns it: the monitor must not wait for it (it would
    /// take the ptrace stops), the CLI must not stop or delete it.
    pub busy: bool,
    /// The lazy fill of its memory after it arrived, while it runs.
    pub filling: Option<std::thread::JoinHandle<()>>,
}

/// What a stop of this host costs, learned from its last ones (moving
/// averages): downtime = fixed + pages x per page.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct StopCost {
    /// What a stop with next to no pages cost, ms.
    pub fixed_ms: Option<f64>,
    /// What each page beyond cost, ms: read in the last round while the
    /// partition is stopped, stored, and filled into the restored memory.
    pub ms_per_page: Option<f64>,
}

/// The agent's shared state.
pub struct Agent {
    pub(crate) opts: Options,
    pub(crate) ctx: HostCtx,
    parts: Mutex<BTreeMap<String, Entry>>,
    /// The page stores of incoming migrations, by id, for their extra
    /// page streams.
    pub(crate) incoming: Mutex<std::collections::HashMap<String, Arc<Mutex<lpm_migrate::store::Store>>>>,
    /// What this host's last outgoing migrations' stops cost: the
    /// policy's model of the next one.
    pub(crate) stop_cost: Mutex<StopCost>,
    /// The kernel features this host lacks, probed once: they do not
    /// change while lpmd runs, and probing takes tens of milliseconds a
    /// validation would otherwise spend.
    kernel_missing: std::sync::OnceLock<Vec<String>>,
    /// Partitions that left by migration, by name, while their frozen
    /// copies here are removed (after the report, off the migration's
    /// time): their names, NICs and cgroups are still taken.
    leaving: Mutex<std::collections::HashMap<String, std::thread::JoinHandle<()>>>,
}

impl Agent {
    pub(crate) fn parts(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn info(&self, e: &Entry) -> PartitionInfo {
        let state = if e.busy {
            "migrating"
        } else if e.pid.is_some() {
            "running"
        } else {
            "stopped"
        };
        PartitionInfo {
            spec: e.spec.clone(),
            host: self.opts.host.clone(),
            state: state.into(),
            pid: e.pid,
            memory_current: e.plumbing.cgroup().memory_current().ok(),
        }
    }

    fn spec_path(&self, name: &str) -> PathBuf {
        self.opts.dir.join("partitions").join(name).join("spec.json")
    }

    /// Records the spec on disk, where the host keeps what it runs.
    pub(crate) fn save_spec(&self, spec: &PartitionSpec) -> Result<()> {
        let p = self.spec_path(&spec.name);
        std::fs::create_dir_all(p.parent().expect("has parent")).with_context(|| format!("create {}", p.display()))?;
        std::fs::write(&p, serde_json::to_vec_pretty(spec)?).with_context(|| format!("write {}", p.display()))
    }

    fn forget(&self, name: &str) {
        let _ = std::fs::remove_file(self.spec_path(name));
    }

    /// Adds a partition that arrived by migration (already running).
    pub(crate) fn adopt(
        &self,
        spec: PartitionSpec,
        plumbing: Plumbing,
        pid: i32,
        filling: Option<std::thread::JoinHandle<()>>,
    ) -> Result<()> {
        self.save_spec(&spec)?;
        self.parts().insert(spec.name.clone(), Entry { spec, plumbing, pid: Some(pid), busy: false, filling });
        Ok(())
    }

    /// The lazy fill of a partition that arrived, if one may still run.
    pub(crate) fn take_filling(&self, name: &str) -> Option<std::thread::JoinHandle<()>> {
        self.parts().get_mut(name).and_then(|e| e.filling.take())
    }

    /// The kernel features lpm needs that this host lacks.
    pub(crate) fn missing_kernel_features(&self) -> &[String] {
        self.kernel_missing
            .get_or_init(|| lpm_sys::probe::probe_all().into_iter().filter(|p| p.result.is_err()).map(|p| p.name.to_string()).collect())
    }

    /// Waits until the frozen copy of a partition that left by migration
    /// is gone, so that its name, address and plumbing are free again.
    pub(crate) fn await_departure(&self, name: &str) {
        let leaving = self.leaving.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
        if let Some(h) = leaving {
            let _ = h.join();
        }
    }

    /// Forgets a partition that left by migration and removes its frozen
    /// copy here with `remove`, on a thread of its own.
    /// Its record on disk stays, marked handed over, until `remove` has
    /// removed it too: a restart in between sweeps what is left.
    pub(crate) fn depart(&self, name: &str, remove: impl FnOnce() + Send + 'static) {
        self.parts().remove(name);
        let h = std::thread::spawn(remove);
        self.leaving.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), h);
    }

    /// Marks a partition busy (or not); fails when it is not here or busy.
    pub(crate) fn set_busy(&self, name: &str, busy: bool) -> Result<()> {
        let mut parts = self.parts();
        let e = parts.get_mut(name).ok_or_else(|| anyhow!("no partition {name:?} on {}", self.opts.host))?;
        if busy && e.busy {
            bail!("partition {name} is already being migrated");
        }
        e.busy = busy;
        Ok(())
    }

    pub(crate) fn reports_dir(&self) -> PathBuf {
        self.opts.dir.join("reports")
    }

    /// Keeps a migration report on this host.
    pub(crate) fn keep_report(&self, r: &Report) {
        let dir = self.reports_dir();
        let _ = std::fs::create_dir_all(&dir);
        let name = format!("{}-{}.json", r.started_unix_ms, r.partition);
        if let Ok(body) = serde_json::to_vec_pretty(r) {
            let _ = std::fs::write(dir.join(name), body);
        }
    }

    fn create(&self, spec: PartitionSpec) -> Result<Response> {
        spec.validate().context("invalid partition spec")?;
        self.await_departure(&spec.name);
        if self.parts().contains_key(&spec.name) {
            bail!("partition {} exists on {} already", spec.name, self.opts.host);
        }
        let plumbing = Plumbing::create(&self.ctx, &spec, true).with_context(|| format!("partition {}: plumbing", spec.name))?;
        let pid = match partition::start(&self.ctx, &spec, &plumbing) {
            Ok(pid) => pid,
            Err(e) => {
                let _ = plumbing.destroy();
                return Err(anyhow!(e).context(format!("partition {}: start", spec.name)));
            }
        };
        self.save_spec(&spec)?;
        let e = Entry { spec: spec.clone(), plumbing, pid: Some(pid), busy: false, filling: None };
        let info = self.info(&e);
        self.parts().insert(spec.name.clone(), e);
        tracing::info!(partition = %spec.name, pid, "partition started");
        Ok(Response::Partition(info))
    }

    fn stop(&self, name: &str) -> Result<Response> {
        let (pid, plumbing) = {
            let mut parts = self.parts();
            let e = parts.get_mut(name).ok_or_else(|| anyhow!("no partition {name:?} on {}", self.opts.host))?;
            if e.busy {
                bail!("partition {name} is being migrated");
            }
            e.busy = true;
            (e.pid, Plumbing::open(&self.ctx, &e.spec))
        };
        let res = match (pid, plumbing) {
            (Some(pid), Ok(plumbing)) => partition::stop(pid, &plumbing, Duration::from_secs(5)).map(|_| ()).map_err(anyhow::Error::from),
            (Some(_), Err(e)) => Err(anyhow::Error::from(e)),
            (None, _) => Ok(()),
        };
        if let Some(pid) = pid {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
        let mut parts = self.parts();
        if let Some(e) = parts.get_mut(name) {
            e.busy = false;
            if res.is_ok() {
                e.pid = None;
            }
        }
        res.with_context(|| format!("stop partition {name}"))?;
        Ok(Response::Ok)
    }

    fn start(&self, name: &str) -> Result<Response> {
        let mut parts = self.parts();
        let e = parts.get_mut(name).ok_or_else(|| anyhow!("no partition {name:?} on {}", self.opts.host))?;
        if e.busy || e.pid.is_some() {
            bail!("partition {name} is {}", if e.busy { "being migrated" } else { "running already" });
        }
        let pid = partition::start(&self.ctx, &e.spec, &e.plumbing).with_context(|| format!("start partition {name}"))?;
        e.pid = Some(pid);
        let info = self.info(e);
        Ok(Response::Partition(info))
    }

    fn delete(&self, name: &str) -> Result<Response> {
        self.stop(name)?;
        let e = self.parts().remove(name);
        if let Some(e) = e {
            e.plumbing.destroy().with_context(|| format!("remove partition {name}"))?;
        }
        self.forget(name);
        let _ = std::fs::remove_dir_all(self.opts.dir.join("partitions").join(name));
        let _ = std::fs::remove_dir_all(self.ctx.partition_dir(name));
        Ok(Response::Ok)
    }

    fn logs(&self, name: &str, max: u64) -> Result<Response> {
        if !self.parts().contains_key(name) {
            bail!("no partition {name:?} on {}", self.opts.host);
        }
        let path = self.ctx.console_log(name);
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let start = bytes.len().saturating_sub(max as usize);
        Ok(Response::Logs(String::from_utf8_lossy(&bytes[start..]).into_owned()))
    }

    fn reports(&self) -> Result<Response> {
        let mut out = Vec::new();
        if let Ok(rd) = std::fs::read_dir(self.reports_dir()) {
            let mut paths: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
            paths.sort();
            for p in paths {
                if let Ok(r) = std::fs::read(&p).map_err(anyhow::Error::from).and_then(|b| Ok(serde_json::from_slice::<Report>(&b)?)) {
                    out.push(r);
                }
            }
        }
        Ok(Response::Reports(out))
    }

    /// Notices partitions whose init exited.
    fn reap(&self) {
        let mut parts = self.parts();
        for (name, e) in parts.iter_mut().filter(|(_, e)| !e.busy) {
            let Some(pid) = e.pid else { continue };
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(st) => {
                    tracing::info!(partition = %name, pid, status = ?st, "partition init exited");
                    e.pid = None;
                }
                Err(nix::errno::Errno::ECHILD) => {
                    if !Path::new(&format!("/proc/{pid}")).exists() {
                        e.pid = None;
                    }
                }
                Err(_) => {}
            }
        }
    }

    /// Stops every partition (lpmd is going away; the lab tears down).
    fn shutdown(&self) {
        let leaving: Vec<String> = self.leaving.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect();
        for n in leaving {
            self.await_departure(&n);
        }
        let names: Vec<String> = self.parts().keys().cloned().collect();
        for n in names {
            let e = self.parts().remove(&n);
            if let Some(e) = e {
                if let Some(pid) = e.pid {
                    let _ = partition::stop(pid, &e.plumbing, Duration::from_secs(2));
                    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
                }
                let _ = e.plumbing.destroy();
            }
        }
    }
}

fn serve_control(agent: &Arc<Agent>, mut s: UnixStream) -> Result<()> {
    lpm_wire::handshake(&mut s, Role::Acceptor, &agent.opts.key, &agent.opts.host).context("control handshake")?;
    loop {
        let req: Request = match api::recv(&mut s, "request") {
            Ok(r) => r,
            Err(api::ApiError::Wire(lpm_wire::WireError::Io { .. })) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let res = match req {
            Request::Ping => Ok(Response::Ok),
            Request::Create(spec) => agent.create(spec),
            Request::List => Ok(Response::Partitions(agent.parts().values().map(|e| agent.info(e)).collect())),
            Request::Show(n) => agent
                .parts()
                .get(&n)
                .map(|e| Response::Partition(agent.info(e)))
                .ok_or_else(|| anyhow!("no partition {n:?} on {}", agent.opts.host)),
            Request::Stop(n) => agent.stop(&n),
            Request::Start(n) => agent.start(&n),
            Request::Delete(n) => agent.delete(&n),
            Request::Logs { name, max_bytes } => agent.logs(&name, max_bytes),
            Request::Reports => agent.reports(),
            Request::Migrate(m) => migration::source(agent, m, &mut s),
        };
        let res = res.unwrap_or_else(|e| Response::Error(format!("{e:#}")));
        api::send(&mut s, &res)?;
    }
}

fn serve_mover(agent: &Arc<Agent>, mut s: TcpStream) -> Result<()> {
    s.set_nodelay(true).ok();
    s.set_read_timeout(Some(migration::mover_timeout())).context("set timeout")?;
    s.set_write_timeout(Some(migration::mover_timeout())).context("set timeout")?;
    let session = lpm_wire::handshake(&mut s, Role::Acceptor, &agent.opts.key, &agent.opts.host).context("mover handshake")?;
    tracing::info!(peer = %session.peer, "mover connection");
    migration::target(agent, s, &session.peer)
}

/// Runs lpmd until SIGTERM or SIGINT.
pub fn run(opts: Options) -> Result<()> {
    // Before any thread: every thread inherits the blocked mask, and one
    // waits for the signals.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGINT);
    sigs.thread_block().context("block SIGTERM")?;
    lpm_sys::misc::set_child_subreaper().context("become child subreaper")?;
    std::fs::create_dir_all(&opts.dir).with_context(|| format!("create {}", opts.dir.display()))?;
    let ctx = HostCtx { host: opts.host.clone(), dir: opts.shared.clone(), bridge: opts.bridge.clone(), prefix: opts.prefix.clone() };
    // Before the control socket exists: whoever sees it finds a clean host.
    let parts = crate::orphans::sweep(&ctx, &opts.dir);
    // Bound under another name and renamed into place once listening:
    // whoever sees the socket can connect (between bind and listen a
    // connect is refused; a lab waits for the file, then connects).
    let fresh = opts.control.with_extension("sock.new");
    let _ = std::fs::remove_file(&fresh);
    let control = UnixListener::bind(&fresh).with_context(|| format!("bind control socket {}", fresh.display()))?;
    std::fs::rename(&fresh, &opts.control).with_context(|| format!("move the control socket to {}", opts.control.display()))?;
    let mover = TcpListener::bind(opts.listen).with_context(|| format!("listen on {}", opts.listen))?;
    let agent = Arc::new(Agent {
        opts,
        ctx,
        incoming: Mutex::new(std::collections::HashMap::new()),
        parts: Mutex::new(parts),
        stop_cost: Mutex::new(StopCost::default()),
        kernel_missing: std::sync::OnceLock::new(),
        leaving: Mutex::new(std::collections::HashMap::new()),
    });
    // Probe cgroups left by an lpmd killed while it probed.
    for p in lpm_sys::probe::remove_stale_probes() {
        tracing::info!(cgroup = %p.display(), "removed a stale probe cgroup");
    }
    let probing = {
        // Probed now, so that no migration waits for it (and joined before
        // lpmd exits, so that no probe cgroup is left).
        let a = agent.clone();
        std::thread::spawn(move || {
            let missing = a.missing_kernel_features();
            if !missing.is_empty() {
                tracing::warn!(?missing, "kernel features missing: partitions cannot move here");
            }
        })
    };
    {
        let a = agent.clone();
        std::thread::spawn(move || {
            for s in control.incoming().flatten() {
                let a = a.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve_control(&a, s) {
                        tracing::warn!(error = format!("{e:#}"), "control connection");
                    }
                });
            }
        });
    }
    {
        let a = agent.clone();
        std::thread::spawn(move || {
            for s in mover.incoming().flatten() {
                let a = a.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve_mover(&a, s) {
                        tracing::warn!(error = format!("{e:#}"), "mover connection");
                    }
                });
            }
        });
    }
    {
        let a = agent.clone();
        std::thread::spawn(move || loop {
            a.reap();
            std::thread::sleep(Duration::from_millis(200));
        });
    }
    tracing::info!(host = %agent.opts.host, listen = %agent.opts.listen, "lpmd running");
    let _ = std::io::stderr().flush();
    let sig = sigs.wait().context("wait for a signal")?;
    tracing::info!(?sig, "shutting down");
    agent.shutdown();
    let _ = probing.join();
    let _ = std::fs::remove_file(&agent.opts.control);
    Ok(())
}
