//! What a crashed lpmd left behind, swept when its successor starts.
//!
//! lpmd keeps its partitions in memory, with a record (`spec.json`) per
//! partition in its state directory. A predecessor that died (SIGKILL, a
//! crash, a killed host agent during a migration) leaves pieces named after
//! this host that nobody owns any more: the network namespaces
//! `{prefix}-{host}-NAME`, the cgroups `{prefix}/{host}/NAME` with whatever
//! still runs in them (a half-restored incoming partition), their
//! host-side veths on the partition bridge, and the migration scratch
//! directories `/dev/shm/{prefix}-{host}-*`. At startup, before it serves
//! anyone, lpmd removes every such piece of a partition it has no record
//! of, and every scratch directory (no migration runs yet).
//!
//! A partition with a record is never killed. When nothing of it runs any
//! more, its plumbing is rebuilt and it is listed as stopped (`lpm partition
//! start` runs it again). When it still runs, it is adopted: listed as
//! running, its init found again from the record of it (pid and start
//! time) or as the process of its cgroup whose parent is outside. The
//! pieces of a partition an unsettled migration holds (the source's copy,
//! frozen or not; the target's incoming copy) are the migration's: the
//! sweep leaves them to the recovery that follows it. A record marked
//! `handed-over` (by lpm before migrations were recorded) belongs to the
//! migration's target: its pieces go.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lpm_host::cgroup::{Cgroup, CgroupError, Layout};
use lpm_host::net::{self, NetError, Netns};
use lpm_host::partition::{HostCtx, PartitionError, PartitionSpec, Plumbing};

use crate::state::{recorded_init, Entry};

/// How long the processes of a swept partition get to vanish after
/// SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// Errors of the sweep; each names the partition or the path.
#[derive(Debug, thiserror::Error)]
pub enum OrphanError {
    /// Listing or removing a file or directory failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A network step failed.
    #[error("partition {partition}: {op}")]
    Net {
        /// The partition (or the host, for listings).
        partition: String,
        /// The step.
        op: &'static str,
        /// The cause (boxed: `NetError` is large).
        #[source]
        source: Box<NetError>,
    },
    /// A cgroup step failed.
    #[error("partition {partition}: {op}")]
    Cgroup {
        /// The partition.
        partition: String,
        /// The step.
        op: &'static str,
        /// The cause.
        #[source]
        source: CgroupError,
    },
    /// Processes survived SIGKILL.
    #[error("partition {partition}: processes {pids:?} survived SIGKILL")]
    Survivors {
        /// The partition.
        partition: String,
        /// The processes still there.
        pids: Vec<i32>,
    },
    /// Rebuilding a stopped partition's plumbing failed.
    #[error("partition {partition}: rebuild its plumbing")]
    Plumbing {
        /// The partition.
        partition: String,
        /// The cause (boxed: `PartitionError` is large).
        #[source]
        source: Box<PartitionError>,
    },
}

/// Result alias for this module.
pub type Result<T, E = OrphanError> = std::result::Result<T, E>;

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> OrphanError {
    let path = path.to_path_buf();
    move |source| OrphanError::Io { op, path, source }
}

/// A partition record in lpmd's state directory
/// (`DIR/partitions/NAME/spec.json`).
#[derive(Debug)]
pub struct Record {
    /// The partition (the record's directory name).
    pub name: String,
    /// Its spec; `None` when the file is missing or unreadable (the
    /// partition still counts as known: nothing of it is removed).
    pub spec: Option<PartitionSpec>,
    /// A migration gave it to another host (the `handed-over` mark).
    pub handed_over: bool,
}

/// The partition records under `state_dir`.
pub fn records(state_dir: &Path) -> Result<Vec<Record>> {
    let dir = state_dir.join("partitions");
    let rd = match std::fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err("list", &dir)(e)),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e.map_err(io_err("list", &dir))?;
        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
        let spec = std::fs::read(e.path().join("spec.json")).ok().and_then(|b| serde_json::from_slice::<PartitionSpec>(&b).ok());
        out.push(Record { name, spec, handed_over: e.path().join("handed-over").exists() });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// What of this host's partitions exists on the machine, found by name.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Found {
    /// Partitions with a network namespace `{prefix}-{host}-NAME`.
    pub netns: BTreeSet<String>,
    /// Partitions with a cgroup `{prefix}/{host}/NAME` in any hierarchy.
    pub cgroups: BTreeSet<String>,
    /// Host-side partition veths (`lp` and 8 hex digits) on the bridge.
    pub veths: BTreeSet<String>,
    /// Migration scratch directories `/dev/shm/{prefix}-{host}-*`.
    pub scratch: Vec<PathBuf>,
}

impl Found {
    /// Every partition name found.
    pub fn names(&self) -> BTreeSet<String> {
        self.netns.union(&self.cgroups).cloned().collect()
    }
}

/// The partition name in a namespace name of this host, if it is one.
fn partition_of_netns(ctx: &HostCtx, ns: &str) -> Option<String> {
    let name = ns.strip_prefix(&format!("{}-{}-", ctx.prefix, ctx.host))?;
    plain_name(name).then(|| name.to_string())
}

/// A name a partition may have (`[a-z0-9-]`): anything else was not made
/// by lpmd and is not touched.
fn plain_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A host-side partition veth name (`lp` and 8 lowercase hex digits).
fn is_partition_veth(name: &str) -> bool {
    name.len() == 10 && name.starts_with("lp") && name[2..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Interface names in `ip -o link show` output ("5: lp1234abcd@if4: ..."),
/// for the tests, which look as an operator would.
#[cfg(test)]
fn link_names(out: &str) -> impl Iterator<Item = &str> {
    out.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap_or(n))
}

/// Every hierarchy root of the layout.
fn roots(layout: &Layout) -> Vec<PathBuf> {
    match layout {
        Layout::Hybrid { v2, memory, cpu } => {
            let mut r = vec![v2.clone(), memory.clone()];
            if cpu != memory {
                r.push(cpu.clone());
            }
            r
        }
        Layout::Unified { root } => vec![root.clone()],
    }
}

/// Looks for what this host's partitions left on the machine: namespaces,
/// cgroups, bridge ports and scratch directories, whoever owns them.
pub fn scan(ctx: &HostCtx) -> Result<Found> {
    let mut f = Found::default();
    let ns = Netns::list().map_err(|source| OrphanError::Net {
        partition: ctx.host.clone(),
        op: "list network namespaces",
        source: Box::new(source),
    })?;
    f.netns = ns.iter().filter_map(|n| partition_of_netns(ctx, n)).collect();
    let layout =
        Layout::current().map_err(|source| OrphanError::Cgroup { partition: ctx.host.clone(), op: "detect cgroup layout", source })?;
    for root in roots(layout) {
        let dir = root.join(ctx.host_cgroup_rel());
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("list", &dir)(e)),
        };
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if let Some(n) = e.file_name().to_str().filter(|n| plain_name(n)) {
                    f.cgroups.insert(n.to_string());
                }
            }
        }
    }
    // A missing bridge has no ports: nothing to sweep there.
    if let Ok(links) = net::rtnl(None, &ctx.bridge, "list links", |r| r.links()) {
        if let Some(br) = links.iter().find(|l| l.name == ctx.bridge) {
            f.veths = links.iter().filter(|l| l.master == Some(br.index) && is_partition_veth(&l.name)).map(|l| l.name.clone()).collect();
        }
    }
    let shm = Path::new("/dev/shm");
    let start = format!("{}-{}-", ctx.prefix, ctx.host);
    match std::fs::read_dir(shm) {
        Ok(rd) => {
            f.scratch = rd.flatten().filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(&start))).map(|e| e.path()).collect();
            f.scratch.sort();
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("list", shm)(e)),
    }
    Ok(f)
}

/// The processes in partition `name`'s cgroup (any hierarchy, any depth)
/// or network namespace.
fn processes(ctx: &HostCtx, name: &str) -> BTreeSet<i32> {
    let mut pids = BTreeSet::new();
    if let Ok(layout) = Layout::current() {
        for root in roots(layout) {
            let mut stack = vec![root.join(ctx.cgroup_rel(name))];
            while let Some(d) = stack.pop() {
                let Ok(rd) = std::fs::read_dir(&d) else { continue };
                stack.extend(rd.flatten().filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false)).map(|e| e.path()));
                let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
                pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
    }
    if let Ok(m) = std::fs::metadata(Path::new(net::NETNS_DIR).join(ctx.netns_name(name))) {
        let me = std::process::id() as i32;
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            // Zombies have no namespaces left: the stat fails, as it should.
            if let Ok(n) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
                if pid != me && (n.dev(), n.ino()) == (m.dev(), m.ino()) {
                    pids.insert(pid);
                }
            }
        }
    }
    pids
}

/// Kills every process of partition `name` and waits until they are gone.
fn kill_processes(ctx: &HostCtx, name: &str) -> Result<()> {
    if let Ok(layout) = Layout::current() {
        // Frozen tasks die only once thawed (SIGKILL thaws on cgroup2, not
        // in a v1 freezer): thaw first, whatever froze them.
        let _ = std::fs::write(layout.v2_root().join(ctx.cgroup_rel(name)).join("cgroup.freeze"), "0");
    }
    let deadline = Instant::now() + KILL_WAIT;
    loop {
        let pids = processes(ctx, name);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(OrphanError::Survivors { partition: name.to_string(), pids: pids.into_iter().collect() });
        }
        for &pid in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Removes cgroup directories under `dir`, deepest first; retries briefly
/// while the kernel still counts killed tasks (EBUSY).
fn rmdir_tree(dir: &Path) -> Result<()> {
    let mut all = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        match std::fs::read_dir(&d) {
            Ok(rd) => stack.extend(rd.flatten().filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false)).map(|e| e.path())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err("list", &d)(e)),
        }
        all.push(d);
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in all {
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            match std::fs::remove_dir(&d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(io_err("remove cgroup", &d)(e)),
            }
        }
    }
    Ok(())
}

/// Removes everything of partition `name` on this host: kills its
/// processes, removes its cgroup in every hierarchy, its host-side veth and
/// its network namespace. Pieces already gone are fine; so are partial
/// ones (a cgroup present in one hierarchy only, a namespace without veth).
pub fn remove_partition(ctx: &HostCtx, name: &str) -> Result<()> {
    kill_processes(ctx, name)?;
    let layout =
        Layout::current().map_err(|source| OrphanError::Cgroup { partition: name.to_string(), op: "detect cgroup layout", source })?;
    match Cgroup::open(&ctx.cgroup_rel(name)) {
        Ok(cg) => cg.remove().map_err(|source| OrphanError::Cgroup { partition: name.to_string(), op: "remove cgroup", source })?,
        Err(_) => {
            for root in roots(layout) {
                rmdir_tree(&root.join(ctx.cgroup_rel(name)))?;
            }
        }
    }
    let net_err = |op| move |source| OrphanError::Net { partition: name.to_string(), op, source: Box::new(source) };
    let veth = ctx.veth_name(name);
    lpm_host::hold::remove_port(&veth).map_err(net_err("delete the hold port"))?;
    net::rtnl(None, &veth, "delete", |r| r.delete(&veth)).map_err(net_err("delete host-side veth"))?;
    Netns::delete(&ctx.netns_name(name)).map_err(net_err("delete network namespace"))?;
    Ok(())
}

/// Takes back a recorded partition that still runs (a restarted lpmd):
/// its plumbing as it is, its init as recorded (pid and start time), or
/// else the process of its cgroup whose parent is not in it.
fn adopt(ctx: &HostCtx, state_dir: &Path, spec: &PartitionSpec, procs: &BTreeSet<i32>) -> Result<Entry> {
    let plumbing =
        Plumbing::open(ctx, spec).map_err(|source| OrphanError::Plumbing { partition: spec.name.clone(), source: Box::new(source) })?;
    let init = recorded_init(&state_dir.join("partitions").join(&spec.name)).or_else(|| {
        procs.iter().copied().find(|&pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat.rsplit_once(") ").and_then(|(_, r)| r.split_whitespace().nth(1)).and_then(|p| p.parse::<i32>().ok());
            ppid.is_some_and(|pp| !procs.contains(&pp))
        })
    });
    tracing::info!(partition = %spec.name, pid = ?init, "adopted a partition that still runs");
    Ok(Entry { spec: spec.clone(), plumbing, pid: init, busy: false, migration: None, filling: None })
}

/// What unsettled migrations hold, which the sweep leaves alone: the
/// pieces of their partitions, and their scratch directories.
#[derive(Debug, Default)]
pub struct Held {
    /// Partitions.
    pub partitions: BTreeSet<String>,
    /// Migration ids.
    pub migrations: BTreeSet<String>,
}

/// What a sweep did, for the log.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Partitions without a record whose pieces were removed.
    pub removed: Vec<String>,
    /// Bridge ports removed that no partition owned.
    pub veths: Vec<String>,
    /// Scratch directories removed.
    pub scratch: usize,
    /// Recorded partitions whose processes were gone: listed as stopped.
    pub stopped: Vec<String>,
    /// Recorded partitions still running, taken back.
    pub adopted: Vec<String>,
    /// Recorded partitions with processes still running that could not be
    /// taken back (unreadable record, missing plumbing): left alone.
    pub untouched: Vec<String>,
    /// What could not be done.
    pub failures: Vec<String>,
}

/// Sweeps this host at lpmd's startup (see the module doc) and returns the
/// recorded partitions whose processes are gone, with fresh plumbing, as
/// stopped entries for lpmd's table. Never fails: what cannot be removed
/// is logged, and lpmd starts anyway.
pub(crate) fn sweep(ctx: &HostCtx, state_dir: &Path, held: &Held) -> BTreeMap<String, Entry> {
    let mut s = Sweep::default();
    let mut entries = BTreeMap::new();
    let recs = records(state_dir).unwrap_or_else(|e| {
        // Without the records nothing may be removed: any piece could be
        // a recorded partition's.
        s.failures.push(format!("{e:#}"));
        Vec::new()
    });
    let found = if s.failures.is_empty() {
        scan(ctx).unwrap_or_else(|e| {
            s.failures.push(format!("{e:#}"));
            Found::default()
        })
    } else {
        Found::default()
    };
    let known: BTreeSet<&str> = recs.iter().map(|r| r.name.as_str()).chain(held.partitions.iter().map(String::as_str)).collect();
    for name in found.names() {
        if known.contains(name.as_str()) {
            continue;
        }
        match remove_partition(ctx, &name) {
            Ok(()) => s.removed.push(name),
            Err(e) => s.failures.push(format!("{:#}", anyhow::Error::from(e))),
        }
    }
    for r in recs.iter().filter(|r| !held.partitions.contains(&r.name)) {
        let procs = processes(ctx, &r.name);
        let running = !procs.is_empty();
        match &r.spec {
            // Given away: what is here is the source's frozen copy, or its
            // empty shell.
            Some(_) if r.handed_over => match remove_partition(ctx, &r.name) {
                Ok(()) => {
                    let _ = std::fs::remove_dir_all(state_dir.join("partitions").join(&r.name));
                    s.removed.push(r.name.clone());
                }
                Err(e) => s.failures.push(format!("{:#}", anyhow::Error::from(e))),
            },
            Some(spec) if running => match adopt(ctx, state_dir, spec, &procs) {
                Ok(e) => {
                    s.adopted.push(r.name.clone());
                    entries.insert(r.name.clone(), e);
                }
                Err(e) => {
                    s.failures.push(format!("{:#}", anyhow::Error::from(e)));
                    s.untouched.push(r.name.clone());
                }
            },
            None if running => s.untouched.push(r.name.clone()),
            // Unreadable: it may be anything; keep every piece.
            None => s.failures.push(format!("partition {}: record unreadable; its pieces are kept", r.name)),
            Some(spec) => {
                let rebuilt = remove_partition(ctx, &r.name).and_then(|()| {
                    Plumbing::create(ctx, spec, true)
                        .map_err(|source| OrphanError::Plumbing { partition: r.name.clone(), source: Box::new(source) })
                });
                match rebuilt {
                    Ok(plumbing) => {
                        s.stopped.push(r.name.clone());
                        // It ended while no lpmd ran (its end is recorded
                        // otherwise): nobody saw its status.
                        let record = state_dir.join("partitions").join(&r.name);
                        if crate::state::read_exit(&record).is_none() {
                            let exit = crate::api::Exit::unknown("it ended while lpmd was not running", false);
                            if let Err(e) = crate::state::write_exit(&record, &exit) {
                                tracing::warn!(partition = %r.name, error = %e, "record how the partition ended");
                            }
                        }
                        entries.insert(
                            r.name.clone(),
                            Entry { spec: spec.clone(), plumbing, pid: None, busy: false, migration: None, filling: None },
                        );
                    }
                    Err(e) => s.failures.push(format!("{:#}", anyhow::Error::from(e))),
                }
            }
        }
    }
    // Ports whose namespace is gone but held open by a straggler, or of a
    // partition removed above: no recorded partition owns them.
    let owned: BTreeSet<String> = known.iter().map(|n| ctx.veth_name(n)).collect();
    for v in found.veths.iter().filter(|v| !owned.contains(*v)) {
        match net::rtnl(None, v, "delete", |r| r.delete(v)) {
            Ok(true) => s.veths.push(v.clone()),
            // Already gone with its namespace.
            Ok(false) => {}
            Err(e) => s.failures.push(format!("delete veth {v}: {e}")),
        }
    }
    // Scratch directories are named `{prefix}-{host}-{in|out}-{id}`.
    let ours =
        |d: &Path| d.file_name().and_then(|n| n.to_str()).and_then(|n| n.rsplit('-').next()).is_some_and(|id| held.migrations.contains(id));
    for d in found.scratch.iter().filter(|d| !ours(d)) {
        match std::fs::remove_dir_all(d) {
            Ok(()) => s.scratch += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => s.failures.push(format!("remove {}: {e}", d.display())),
        }
    }
    for name in &s.untouched {
        tracing::warn!(partition = %name, "a recorded partition still runs from a previous lpmd but cannot be adopted; left alone");
    }
    for f in &s.failures {
        tracing::warn!(error = %f, "startup sweep");
    }
    tracing::info!(
        removed = ?s.removed,
        veths = ?s.veths,
        scratch = s.scratch,
        stopped = ?s.stopped,
        adopted = ?s.adopted,
        untouched = ?s.untouched,
        held = ?held,
        failures = s.failures.len(),
        "startup sweep"
    );
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Child, Command};
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn names() {
        let ctx = HostCtx { host: "h1".into(), dir: "/tmp/x".into(), bridge: "lpmbr0".into(), prefix: "lpm-ab12cd".into() };
        assert_eq!(partition_of_netns(&ctx, "lpm-ab12cd-h1-kv"), Some("kv".into()));
        assert_eq!(partition_of_netns(&ctx, "lpm-ab12cd-h1-my-db2"), Some("my-db2".into()));
        for not_ours in ["lpm-ab12cd-h1", "lpm-ab12cd-h1-", "lpm-ab12cd-h10-kv", "lpm-ab12cd-h2-kv", "lpm-ffffff-h1-kv", "lpm-ab12cd-h1-KV"]
        {
            assert_eq!(partition_of_netns(&ctx, not_ours), None, "{not_ours}");
        }
        assert!(is_partition_veth(&ctx.veth_name("kv")));
        for not_veth in ["uplink0", "lp1234", "lp1234abcdef", "lpXYZ45678", "mgmt0"] {
            assert!(!is_partition_veth(not_veth), "{not_veth}");
        }
        let out = "4: uplink0@if3: <BROADCAST> mtu 1500 master lpmbr0\n9: lp0badcafe@if2: <BROADCAST> master lpmbr0\n";
        assert_eq!(link_names(out).collect::<Vec<_>>(), ["uplink0", "lp0badcafe"]);
    }

    /// A host of its own: a network namespace with a partition bridge,
    /// where the sweep runs; removed with everything in it at the end.
    struct Host {
        ctx: HostCtx,
        ns: String,
        dir: PathBuf,
        kids: Vec<Child>,
    }

    impl Host {
        fn new() -> Host {
            static N: AtomicU32 = AtomicU32::new(0);
            let tag = format!("{}x{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
            let prefix = format!("lpmsw-{tag}");
            let ns = format!("{prefix}-host");
            let dir = std::env::temp_dir().join(&prefix);
            std::fs::create_dir_all(dir.join("partitions")).unwrap();
            Netns::create(&ns).unwrap();
            net::ip(Some(&ns), &["link", "add", "lpmbr0", "type", "bridge"]).unwrap();
            net::ip(Some(&ns), &["link", "set", "lpmbr0", "up"]).unwrap();
            let ctx = HostCtx { host: "h1".into(), dir: dir.clone(), bridge: "lpmbr0".into(), prefix };
            Host { ctx, ns, dir, kids: Vec::new() }
        }

        /// Runs `f` in the host's namespace (links and `ip` go there).
        fn inside<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
            let fd = Netns::open(&self.ns).unwrap().fd().unwrap();
            lpm_sys::net::in_netns(std::os::fd::AsFd::as_fd(&fd), f).unwrap()
        }

        fn spec(&self, name: &str) -> PartitionSpec {
            PartitionSpec {
                name: name.into(),
                command: vec!["sleep".into(), "1000".into()],
                memory: None,
                cpus: None,
                rt_runtime_us: None,
                ip: None,
                mac: None,
                volumes: vec![],
                isolation: Default::default(),
            }
        }

        /// A partition's plumbing with a process in its cgroup.
        fn partition(&mut self, name: &str, with_process: bool) -> Plumbing {
            let spec = self.spec(name);
            let p = self.inside(|| Plumbing::create(&self.ctx, &spec, true)).unwrap();
            if with_process {
                let c = Command::new("sleep").arg("1000").spawn().unwrap();
                p.cgroup().add(c.id() as i32).unwrap();
                self.kids.push(c);
            }
            p
        }

        fn record(&self, name: &str) {
            let d = self.dir.join("partitions").join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("spec.json"), serde_json::to_vec(&self.spec(name)).unwrap()).unwrap();
        }

        fn links(&self) -> String {
            net::ip(Some(&self.ns), &["-o", "link", "show"]).unwrap()
        }

        fn alive(&mut self, i: usize) -> bool {
            self.kids[i].try_wait().unwrap().is_none()
        }
    }

    impl Drop for Host {
        fn drop(&mut self) {
            for c in &mut self.kids {
                let _ = c.kill();
                let _ = c.wait();
            }
            for n in ["orphan", "known-dead", "known-live", "held"] {
                let _ = self.inside(|| remove_partition(&self.ctx, n));
            }
            if let Ok(layout) = Layout::current() {
                for r in roots(layout) {
                    let _ = rmdir_tree(&r.join(&self.ctx.prefix));
                }
            }
            let _ = Netns::delete(&self.ns);
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn sweep_removes_orphans_and_keeps_recorded_partitions() {
        let mut h = Host::new();
        let orphan = h.partition("orphan", true);
        let live = h.partition("known-live", true);
        h.record("known-live");
        // Pieces of a partition a migration holds, without a record.
        let held = h.partition("held", true);
        h.record("known-dead");
        // A recorded partition whose lpmd died with half its plumbing made.
        let dead_cg = Cgroup::create(&h.ctx.cgroup_rel("known-dead"), Default::default()).unwrap();
        let scratch = PathBuf::from("/dev/shm").join(format!("{}-h1-in-orphan-1", h.ctx.prefix));
        std::fs::create_dir_all(&scratch).unwrap();
        std::fs::write(scratch.join("pages"), b"x").unwrap();

        let found = h.inside(|| scan(&h.ctx)).unwrap();
        assert_eq!(found.names().into_iter().collect::<Vec<_>>(), ["held", "known-dead", "known-live", "orphan"]);
        assert_eq!(found.netns.len(), 3, "{found:?}");
        assert!(found.veths.contains(orphan.veth()) && found.veths.contains(live.veth()), "{found:?}");
        assert_eq!(found.scratch, std::slice::from_ref(&scratch));

        let held_mig = PathBuf::from("/dev/shm").join(format!("{}-h1-in-m1234abcd", h.ctx.prefix));
        std::fs::create_dir_all(&held_mig).unwrap();
        let held_set = Held { partitions: BTreeSet::from(["held".to_string()]), migrations: BTreeSet::from(["m1234abcd".to_string()]) };
        let entries = h.inside(|| sweep(&h.ctx, &h.dir, &held_set));
        // The orphan is gone: process, cgroup, veth, namespace, scratch.
        let t = Instant::now();
        while h.alive(0) && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!h.alive(0), "the orphan's process survived the sweep");
        assert!(!orphan.cgroup().v2_dir().exists(), "orphan cgroup left");
        assert!(!h.links().contains(orphan.veth()), "orphan veth left: {}", h.links());
        assert!(!Netns::list().unwrap().contains(&h.ctx.netns_name("orphan")), "orphan namespace left");
        assert!(!scratch.exists(), "scratch directory left");
        // An unsettled migration's is the migration's.
        assert!(held_mig.exists(), "the sweep removed a held migration's scratch directory");
        std::fs::remove_dir_all(&held_mig).unwrap();
        // The recorded one that runs is adopted: listed, with its process
        // (the one of its cgroup whose parent is outside) as its init.
        assert!(h.alive(1), "a recorded partition's process was killed");
        assert_eq!(live.cgroup().procs().unwrap(), [h.kids[1].id() as i32]);
        assert!(h.links().contains(live.veth()));
        let adopted = entries.get("known-live").expect("known-live adopted");
        assert_eq!((adopted.pid, adopted.migration.as_deref()), (Some(h.kids[1].id() as i32), None));
        // The held one is the migration's: nothing of it was touched.
        assert!(h.alive(2), "the process of a partition a migration holds was killed");
        assert!(held.cgroup().v2_dir().exists() && h.links().contains(held.veth()));
        assert!(!entries.contains_key("held"));
        // The recorded one with nothing running is listed as stopped, with
        // complete plumbing again (a start would find it).
        let e = entries.get("known-dead").expect("known-dead listed");
        assert_eq!((e.pid, e.busy), (None, false));
        assert!(dead_cg.v2_dir().exists());
        assert!(Netns::list().unwrap().contains(&h.ctx.netns_name("known-dead")));
        assert!(h.links().contains(e.plumbing.veth()), "no veth for known-dead: {}", h.links());
        assert_eq!(entries.len(), 2);
    }
}
