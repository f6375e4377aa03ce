//! lpmd: runs the partitions of one host, serves the control API on a unix
//! socket (behind the lpm-wire handshake with the cluster key) and the
//! mover on TCP (mutual TLS, or that handshake when `insecure`), and the
//! same control API to operators over mutual TLS on `api_listen`
//! (remote.rs, docs/api.md).
//!
//! lpmd is the parent of every partition's init it started (and a child
//! subreaper, so restored trees come back to it). Exits are noticed by
//! polling each init with a non-blocking waitpid: a blanket wait for any
//! child would steal the ptrace stops a checkpoint or restore on another
//! thread waits for.
//!
//! At startup, before it serves anyone, lpmd reads its migration records,
//! sweeps what a predecessor left (orphans.rs: pieces of partitions it has
//! no record of), adopts the recorded partitions still running, and
//! resumes every unsettled migration from its record (migration/mod.rs).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use lpm_host::config::{self, AgentConfig};
use lpm_host::partition::HostCtx;
use lpm_migrate::journal::Journal;
use lpm_wire::Role;
use nix::sys::signal::{SigSet, Signal};

use crate::api::{self, Request, Response};
use crate::gate::{Deadline, Gate, Limits, Peer, Permit, Timeouts};
use crate::migration;
use crate::state::{Agent, Options};

/// Migrations a host runs as the source, or as the target, at once by
/// default.
pub const DEFAULT_CONCURRENT: usize = 4;

/// lpmd's command line (also `lpm daemon`, so a lab started from a bare
/// `cargo run` finds its agent in the same binary). Each option overrides
/// the same key of the configuration file (`lpm_host::config`), which is
/// `--config` or, when that is not given, /etc/lpm/lpmd.toml if it exists.
#[derive(clap::Args, Debug)]
pub struct DaemonArgs {
    /// Configuration file (TOML; default /etc/lpm/lpmd.toml when it exists).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This host's name (default: the node name).
    #[arg(long)]
    pub host: Option<String>,
    /// State directory (default /var/lib/lpm).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Mover address (ip:port); required, here or in the file.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// File holding the cluster's pre-shared key (64 hex digits; default
    /// /etc/lpm/cluster.key).
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Control socket path (default /run/lpm/lpmd.sock).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// Partition bridge in this host's network namespace (default lpmbr0).
    #[arg(long)]
    pub bridge: Option<String>,
    /// Prefix of the names this host creates (network namespaces, cgroups;
    /// default lpm).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Shared storage every host sees at the same path, where partitions'
    /// console logs live (they move with the partition); the parent of
    /// --dir by default.
    #[arg(long)]
    pub shared: Option<PathBuf>,
    /// Migrations this host runs as the source at once (default 4, or
    /// `LPM_MAX_OUTGOING`).
    #[arg(long, value_parser = at_least_one)]
    pub max_outgoing: Option<usize>,
    /// Migrations this host runs as the target at once (default 4, or
    /// `LPM_MAX_INCOMING`).
    #[arg(long, value_parser = at_least_one)]
    pub max_incoming: Option<usize>,
    /// The site CA's certificate (PEM); with --tls-cert and --tls-key it
    /// gives this host its TLS identity.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// This host's certificate (PEM, from `lpm host enroll`).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// This host's private key (PEM, refused unless mode 0600 or closer).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Run the mover without TLS: plain frames behind the cluster key,
    /// partitions' memory in clear on the network (for measurement only).
    #[arg(long)]
    pub insecure: bool,
    /// Where to serve the remote control API (ip:port; HTTP/JSON over
    /// mutual TLS, for operators; needs the TLS identity). None by default:
    /// the local control socket only.
    #[arg(long)]
    pub api_listen: Option<SocketAddr>,
}

fn at_least_one(s: &str) -> std::result::Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!("{s:?}: want a number of migrations, at least 1")),
    }
}

/// The standalone `lpmd` parser.
#[derive(clap::Parser, Debug)]
#[command(name = "lpmd", version = env!("LPM_VERSION"), about = "The lpm host agent")]
struct Standalone {
    #[command(flatten)]
    args: DaemonArgs,
}

impl DaemonArgs {
    /// Parses lpmd's own command line.
    pub fn parse() -> DaemonArgs {
        <Standalone as clap::Parser>::parse().args
    }

    /// The configuration: the file's keys, overridden by the command
    /// line's.
    fn config(self) -> Result<AgentConfig> {
        let file = match &self.config {
            Some(path) => AgentConfig::load(path)?,
            None => AgentConfig::load_if_present(Path::new(config::DEFAULT_PATH))?.unwrap_or_default(),
        };
        Ok(file.overridden_by(AgentConfig {
            host: self.host,
            listen: self.listen,
            dir: self.dir,
            control: self.control,
            key: self.key,
            bridge: self.bridge,
            prefix: self.prefix,
            shared: self.shared,
            max_outgoing: self.max_outgoing,
            max_incoming: self.max_incoming,
            tls_ca: self.tls_ca,
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
            insecure: self.insecure.then_some(true),
            api_listen: self.api_listen,
            hide: None,
            userns_base: None,
        }))
    }

    /// Reads the configuration and the key and runs the agent until
    /// SIGTERM.
    pub fn run(self) -> Result<()> {
        let named = self.config.clone();
        let c = self.config()?;
        let source = named.map_or_else(|| format!("or in {}", config::DEFAULT_PATH), |p| format!("or in {}", p.display()));
        let listen = c.listen.ok_or_else(|| anyhow!("no mover address: give --listen IP:PORT, {source} `listen = \"IP:PORT\"`"))?;
        let host = match c.host {
            Some(h) => h,
            None => nix::sys::utsname::uname().context("uname")?.nodename().to_string_lossy().into_owned(),
        };
        crate::fault::set_host(&host);
        let dir = c.dir.unwrap_or_else(|| config::DEFAULT_DIR.into());
        let key_path = c.key.unwrap_or_else(|| config::DEFAULT_KEY.into());
        let key = crate::client::read_key(&key_path)?;
        let shared = match c.shared {
            Some(s) => s,
            None => dir.parent().map(Path::to_path_buf).unwrap_or_else(|| dir.clone()),
        };
        let limit = |given: Option<usize>, var: &str| -> Result<usize> {
            match (given, std::env::var(var)) {
                (Some(n), _) => Ok(n),
                (None, Ok(v)) => at_least_one(&v).map_err(|e| anyhow!("{var}: {e}")),
                (None, Err(_)) => Ok(DEFAULT_CONCURRENT),
            }
        };
        let max_outgoing = limit(c.max_outgoing, "LPM_MAX_OUTGOING")?;
        let max_incoming = limit(c.max_incoming, "LPM_MAX_INCOMING")?;
        let tls = identity(&host, c.tls_ca, c.tls_cert, c.tls_key)?;
        if c.api_listen.is_some() && tls.is_none() {
            return Err(anyhow!("api_listen needs this host's TLS identity (tls_ca, tls_cert, tls_key): the remote API takes only callers with a certificate of the site CA"));
        }
        let control = c.control.unwrap_or_else(|| config::DEFAULT_CONTROL.into());
        if let Some(parent) = control.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
        }
        let mut hide = lpm_host::isolation::host_secrets(&dir, &control, &key_path);
        hide.extend(c.hide.unwrap_or_default());
        run(Options {
            hide,
            shared,
            host,
            dir,
            listen,
            key,
            control,
            bridge: c.bridge.unwrap_or_else(|| config::DEFAULT_BRIDGE.into()),
            prefix: c.prefix.unwrap_or_else(|| config::DEFAULT_PREFIX.into()),
            max_outgoing,
            max_incoming,
            tls,
            insecure: c.insecure.unwrap_or(false),
            api_listen: c.api_listen,
            userns_base: c.userns_base.unwrap_or(lpm_host::isolation::DEFAULT_USERNS_BASE),
        })
    }
}

/// This host's TLS identity: all three files or none (then the host has
/// no identity and proves itself by the cluster key alone).
fn identity(host: &str, ca: Option<PathBuf>, cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<Arc<lpm_trust::Identity>>> {
    match (ca, cert, key) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => {
            let id = lpm_trust::Identity::load(&ca, &lpm_trust::Issued { cert, key })
                .with_context(|| format!("loading host {host}'s TLS identity"))?;
            Ok(Some(Arc::new(id)))
        }
        (ca, cert, key) => {
            let missing: Vec<&str> = [("tls_ca", ca.is_none()), ("tls_cert", cert.is_none()), ("tls_key", key.is_none())]
                .into_iter()
                .filter_map(|(n, m)| m.then_some(n))
                .collect();
            Err(anyhow!("a TLS identity needs tls_ca, tls_cert and tls_key together; missing: {}", missing.join(", ")))
        }
    }
}

/// The handshake under the gate's deadline; on success the connection
/// counts as authenticated and `s` is left with `timeouts`.
fn authenticate<S: Read + Write + Timeouts>(
    agent: &Agent,
    s: &mut S,
    permit: &mut Permit,
    what: &'static str,
    timeouts: Option<Duration>,
) -> Result<lpm_wire::Session> {
    let deadline = permit.limits().handshake;
    let session = lpm_wire::handshake(&mut Deadline::new(s, deadline), Role::Acceptor, &agent.opts.key, &agent.opts.host).context(what)?;
    s.set_timeouts(timeouts).context("set timeout")?;
    permit.authenticated();
    Ok(session)
}

fn serve_control(agent: &Arc<Agent>, mut s: UnixStream, mut permit: Permit) -> Result<()> {
    if let Err(e) = authenticate(agent, &mut s, &mut permit, "control handshake", None) {
        permit.handshake_failed(&e);
        return Ok(());
    }
    loop {
        let req: Request = match api::recv(&mut s, "request") {
            Ok(r) => r,
            Err(api::ApiError::Wire(lpm_wire::WireError::Io { .. })) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let res = {
            let mut progress = |p| {
                let _ = api::send(&mut s, &Response::Progress(p));
            };
            handle(agent, req, &mut progress)
        };
        api::send(&mut s, &res)?;
    }
}

/// Runs one control request, from the control socket or the remote API;
/// a migration tells how it goes through `progress`.
pub(crate) fn handle(agent: &Arc<Agent>, req: Request, progress: &mut api::ProgressSink) -> Response {
    let res = match req {
        Request::Ping => Ok(Response::Ok),
        Request::Create(spec) => agent.create(spec),
        Request::List => Ok(Response::Partitions(agent.parts().values().map(|e| agent.info(e)).collect())),
        Request::Show(n) => agent
            .parts()
            .get(&n)
            .map(|e| Response::Partition(Box::new(agent.info(e))))
            .ok_or_else(|| anyhow!("no partition {n:?} on {}", agent.opts.host)),
        Request::Stop(n) => agent.stop(&n),
        Request::Start(n) => agent.start(&n),
        Request::Delete(n) => agent.delete(&n),
        Request::Logs { name, max_bytes } => agent.logs(&name, max_bytes),
        Request::LogsFrom { name, offset, tail_lines, max_bytes } => agent.log_chunk(&name, offset, tail_lines, max_bytes),
        Request::Reports => agent.reports(),
        Request::Migrate(m) => migration::source(agent, m, progress),
        Request::Migrations { all } => migration::list(agent, all),
        Request::Migration(id) => migration::show(agent, &id),
        Request::MigrationStop(id) => migration::stop(agent, &id),
        Request::Resolve { id, peer } => migration::relay(agent, &id, peer),
        Request::Host => crate::metrics::host_info(agent).map(|h| Response::Host(Box::new(h))),
    };
    res.unwrap_or_else(|e| Response::Error(format!("{e:#}")))
}

fn serve_mover(agent: &Arc<Agent>, s: TcpStream, mut permit: Permit) -> Result<()> {
    s.set_nodelay(true).ok();
    let (r, w, session) = match migration::accept(agent, s, permit.limits().handshake) {
        Ok(accepted) => accepted,
        Err(e) => {
            permit.handshake_failed(&e);
            return Ok(());
        }
    };
    permit.authenticated();
    tracing::debug!(peer = %session.peer, "mover connection");
    migration::serve(agent, r, w, &session.peer)
}

/// Serves an accepted connection on a thread of its own if `gate` admits
/// it; else (or when no thread can be had) closes it at once.
fn admit<S: Send + 'static>(
    agent: &Arc<Agent>,
    gate: &Arc<Gate>,
    s: S,
    peer: Peer,
    serve: fn(&Arc<Agent>, S, Permit) -> Result<()>,
    what: &'static str,
) {
    let Ok(permit) = gate.admit(peer) else { return };
    let a = agent.clone();
    let spawned = std::thread::Builder::new().name(format!("lpmd-{what}")).spawn(move || {
        if let Err(e) = serve(&a, s, permit) {
            tracing::warn!(error = format!("{e:#}"), "{what} connection");
        }
    });
    if let Err(e) = spawned {
        gate.refused(peer, &format!("no thread: {e}"));
    }
}

/// An accept that failed: out of file descriptors, most likely, which
/// the next accept would fail with too until a connection ends; a pause
/// keeps the accepting thread from spinning meanwhile.
fn accept_failed(gate: &Gate, e: std::io::Error) {
    gate.refused(Peer::Unknown, &format!("accept: {e}"));
    std::thread::sleep(Duration::from_millis(10));
}

/// Runs lpmd until SIGTERM or SIGINT.
pub fn run(opts: Options) -> Result<()> {
    // Before any thread: every thread inherits the blocked mask, and one
    // waits for the signals.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGINT);
    sigs.thread_block().context("block SIGTERM")?;
    // First: a host that cannot prove itself on the mover touches nothing.
    let trust = migration::Trust::of(&opts)?;
    lpm_sys::misc::set_child_subreaper().context("become child subreaper")?;
    // The state directory holds the migration records and the
    // partitions' definitions: root's alone, also when made by another.
    lpm_image::create_private_dir(&opts.dir).with_context(|| format!("create {}", opts.dir.display()))?;
    std::fs::set_permissions(&opts.dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("chmod {}", opts.dir.display()))?;
    let ctx = HostCtx { host: opts.host.clone(), dir: opts.shared.clone(), bridge: opts.bridge.clone(), prefix: opts.prefix.clone() };
    let journal = Journal::open(&opts.dir.join("migrations")).context("open the migration records")?;
    // Before the control socket exists: whoever sees it finds a clean host.
    // The partitions unsettled migrations hold are the migrations' to
    // resume, not the sweep's to remove.
    let held = migration::held(&journal);
    let parts = crate::orphans::sweep(&ctx, &opts.dir, &held);
    // Bound under another name and renamed into place once listening:
    // whoever sees the socket can connect (between bind and listen a
    // connect is refused; a lab waits for the file, then connects).
    let fresh = opts.control.with_extension("sock.new");
    let _ = std::fs::remove_file(&fresh);
    let control = UnixListener::bind(&fresh).with_context(|| format!("bind control socket {}", fresh.display()))?;
    // root's alone: the handshake keeps out who lacks the key, and
    // nobody else needs to make lpmd read a frame.
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600)).with_context(|| format!("chmod {}", fresh.display()))?;
    let mover = TcpListener::bind(opts.listen).with_context(|| format!("listen on {}", opts.listen))?;
    let agent = Arc::new(Agent::new(opts, trust, ctx, journal, parts));
    // Probe cgroups left by an lpmd killed while it probed.
    for p in lpm_sys::probe::remove_stale_probes() {
        tracing::info!(cgroup = %p.display(), "removed a stale probe cgroup");
    }
    migration::recover(&agent);
    if let (Some(addr), Some(id)) = (agent.opts.api_listen, agent.opts.tls.clone()) {
        crate::remote::start(agent.clone(), addr, &id)?;
    }
    std::fs::rename(&fresh, &agent.opts.control).with_context(|| format!("move the control socket to {}", agent.opts.control.display()))?;
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
        let gate = Gate::new("control", Limits::CONTROL);
        std::thread::spawn(move || {
            for s in control.incoming() {
                match s {
                    Ok(s) => {
                        let peer = Peer::of_unix(&s);
                        admit(&a, &gate, s, peer, serve_control, "control");
                    }
                    Err(e) => accept_failed(&gate, e),
                }
            }
        });
    }
    {
        let a = agent.clone();
        let gate = Gate::new("mover", Limits::MOVER);
        std::thread::spawn(move || {
            for s in mover.incoming() {
                match s.and_then(|s| Ok((s.peer_addr()?, s))) {
                    Ok((addr, s)) => admit(&a, &gate, s, Peer::Ip(addr.ip()), serve_mover, "mover"),
                    Err(e) => accept_failed(&gate, e),
                }
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
