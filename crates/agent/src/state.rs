//! What one lpmd knows and does for its host's partitions: the table of
//! partitions with their records on disk, their life cycle (create, stop,
//! start, delete), the journal of migrations and the table of the ones
//! under way. The daemon (sockets, threads) and both ends of a migration
//! use it; it uses neither.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use lpm_host::isolation::UserNs;
use lpm_host::partition::{self, HostCtx, PartitionSpec, Plumbing};
use lpm_migrate::journal::Journal;
use lpm_migrate::policy::StopCosts;
use lpm_migrate::report::Report;
use lpm_wire::Key;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::api::{Exit, PartitionInfo, Response};

/// How lpmd is set up.
pub struct Options {
    /// Shared storage (console logs of partitions).
    pub shared: PathBuf,
    /// This host's name (h1, ...).
    pub host: String,
    /// State directory of this host.
    pub dir: PathBuf,
    /// Mover address to listen on.
    pub listen: std::net::SocketAddr,
    /// The cluster key.
    pub key: Key,
    /// Control socket path.
    pub control: PathBuf,
    /// The partition bridge in this host's network namespace.
    pub bridge: String,
    /// Prefix of every name this lab creates (netns, cgroups).
    pub prefix: String,
    /// Migrations this host may run as the source at once.
    pub max_outgoing: usize,
    /// Migrations this host may run as the target at once.
    pub max_incoming: usize,
    /// This host's TLS identity (site CA, certificate, key), when it has
    /// one.
    pub tls: Option<std::sync::Arc<lpm_trust::Identity>>,
    /// The mover runs plain frames behind the cluster key, without TLS
    /// (for measurement only; lpmd refuses to start with neither this
    /// nor an identity).
    pub insecure: bool,
    /// Where the remote control API listens, when it does.
    pub api_listen: Option<std::net::SocketAddr>,
    /// Host paths hidden from its partitions (lpm_host::isolation::masks).
    pub hide: Vec<std::path::PathBuf>,
    /// The first host id of the ranges `--userns` partitions map.
    pub userns_base: u32,
}

/// A partition this host holds.
pub(crate) struct Entry {
    pub spec: PartitionSpec,
    pub plumbing: Plumbing,
    /// Host pid of the init, while it runs here.
    pub pid: Option<i32>,
    /// A stop, start or delete is under way.
    pub busy: bool,
    /// A migration owns it (its id): the monitor must not wait for it (it
    /// would take the ptrace stops), the CLI must not stop or delete it.
    pub migration: Option<String>,
    /// The lazy fill of its memory after it arrived, while it runs.
    pub filling: Option<std::thread::JoinHandle<()>>,
}

/// The agent's shared state.
pub struct Agent {
    pub(crate) opts: Options,
    /// How the mover proves this host and its peers.
    pub(crate) trust: crate::migration::Trust,
    pub(crate) ctx: HostCtx,
    parts: Mutex<BTreeMap<String, Entry>>,
    /// The page stores of incoming migrations, by id, for their extra
    /// page streams.
    pub(crate) incoming: Mutex<HashMap<String, Arc<Mutex<lpm_migrate::store::Store>>>>,
    /// What this host's last outgoing migrations' stops cost, its own
    /// and each partition's: the policy's model of the next one.
    pub(crate) stop_cost: Mutex<StopCosts>,
    /// The kernel features this host lacks, probed once: they do not
    /// change while lpmd runs, and probing takes tens of milliseconds a
    /// validation would otherwise spend.
    kernel_missing: std::sync::OnceLock<Vec<String>>,
    /// Partitions that left by migration, by name, while their frozen
    /// copies here are removed (after the report, off the migration's
    /// time): their names, NICs and cgroups are still taken.
    leaving: Mutex<HashMap<String, std::thread::JoinHandle<()>>>,
    /// Held by a create of a `--userns` partition from the choice of its
    /// id range until the partition is listed, so that two creates at
    /// once cannot pick the same range.
    userns_alloc: Mutex<()>,
    /// The durable records of this host's migrations.
    pub(crate) journal: Journal,
    /// The migrations this host takes part in that are not settled, by id.
    pub(crate) migrations: Mutex<HashMap<String, Arc<dyn Underway>>>,
}

/// A migration under way on this host, as the rest of the agent sees it:
/// the migration module owns what it is, and gets it back through
/// [`Underway::into_any`].
pub(crate) trait Underway: Send + Sync {
    /// The partition it moves.
    fn partition(&self) -> &str;
    /// This host is its source.
    fn outgoing(&self) -> bool;
    /// The migration itself, for the module that made it.
    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync>;
}

/// Locks a mutex, also after a thread panicked holding it (the data is
/// plain state, still usable).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The start time of process `pid` (field 22 of its stat), which tells a
/// process from a later one that reused its pid.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.first() == Some(&"Z") {
        return None;
    }
    f.get(19)?.parse().ok()
}

impl Agent {
    /// An agent with the partitions `parts` (found at startup).
    pub(crate) fn new(
        opts: Options,
        trust: crate::migration::Trust,
        ctx: HostCtx,
        journal: Journal,
        parts: BTreeMap<String, Entry>,
    ) -> Agent {
        Agent {
            opts,
            trust,
            ctx,
            parts: Mutex::new(parts),
            incoming: Mutex::new(HashMap::new()),
            stop_cost: Mutex::new(StopCosts::default()),
            kernel_missing: std::sync::OnceLock::new(),
            leaving: Mutex::new(HashMap::new()),
            userns_alloc: Mutex::new(()),
            journal,
            migrations: Mutex::new(HashMap::new()),
        }
    }

    pub(crate) fn parts(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        lock(&self.parts)
    }

    pub(crate) fn info(&self, e: &Entry) -> PartitionInfo {
        let state = if e.migration.is_some() {
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
            exit: if e.pid.is_none() && e.migration.is_none() { read_exit(&self.record_dir(&e.spec.name)) } else { None },
        }
    }

    /// Records how partition `name`'s init ended.
    fn save_exit(&self, name: &str, exit: &Exit) {
        tracing::info!(partition = name, exit = %exit, "partition ended");
        if let Err(e) = write_exit(&self.record_dir(name), exit) {
            tracing::warn!(partition = name, error = %e, "record how the partition ended");
        }
    }

    /// Where this host keeps its record of partition `name`.
    pub(crate) fn record_dir(&self, name: &str) -> PathBuf {
        self.opts.dir.join("partitions").join(name)
    }

    /// Records the spec on disk, where the host keeps what it runs.
    pub(crate) fn save_spec(&self, spec: &PartitionSpec) -> Result<()> {
        let p = self.record_dir(&spec.name).join("spec.json");
        lpm_image::create_private_dir(p.parent().expect("has parent")).with_context(|| format!("create {}", p.display()))?;
        write_private(&p, &serde_json::to_vec_pretty(spec)?).with_context(|| format!("write {}", p.display()))
    }

    /// Records which process is partition `name`'s init (pid and start
    /// time), so that a restarted lpmd finds it again.
    pub(crate) fn save_init(&self, name: &str, pid: i32) {
        // A new init: how the last one ended no longer applies.
        let _ = std::fs::remove_file(self.record_dir(name).join(EXIT_FILE));
        let p = self.record_dir(name).join("init");
        let line = format!("{pid} {}\n", start_time(pid).unwrap_or(0));
        if let Err(e) = write_private(&p, line.as_bytes()) {
            tracing::warn!(partition = name, pid, error = %e, "record the init");
        }
    }

    /// Forgets partition `name` on this host: its record only (its files
    /// on shared storage are the partition's).
    pub(crate) fn forget(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.record_dir(name));
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
        self.save_init(&spec.name, pid);
        self.parts().insert(spec.name.clone(), Entry { spec, plumbing, pid: Some(pid), busy: false, migration: None, filling });
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
        let leaving = lock(&self.leaving).remove(name);
        if let Some(h) = leaving {
            let _ = h.join();
        }
    }

    /// Forgets a partition that left by migration and removes its frozen
    /// copy here with `remove`, on a thread of its own.
    pub(crate) fn depart(&self, name: &str, remove: impl FnOnce() + Send + 'static) {
        self.parts().remove(name);
        let h = std::thread::spawn(remove);
        lock(&self.leaving).insert(name.to_string(), h);
    }

    /// Gives partition `name` to migration `id` (or takes it back with
    /// `None`); fails when it is not here, or busy, or another migration
    /// has it.
    pub(crate) fn set_migration(&self, name: &str, id: Option<&str>) -> Result<()> {
        let mut parts = self.parts();
        let e = parts.get_mut(name).ok_or_else(|| anyhow!("no partition {name:?} on {}", self.opts.host))?;
        if let Some(id) = id {
            if let Some(other) = &e.migration {
                bail!("partition {name} is being migrated already (migration {other})");
            }
            if e.busy {
                bail!("partition {name} is being stopped or started");
            }
            e.migration = Some(id.to_string());
        } else {
            e.migration = None;
        }
        Ok(())
    }

    pub(crate) fn reports_dir(&self) -> PathBuf {
        self.opts.dir.join("reports")
    }

    /// Keeps a migration report on this host (one per migration: a later
    /// report of the same migration replaces it).
    pub(crate) fn keep_report(&self, r: &Report) {
        let dir = self.reports_dir();
        let _ = lpm_image::create_private_dir(&dir);
        let name = if r.id.is_empty() { format!("{}-{}.json", r.started_unix_ms, r.partition) } else { format!("{}.json", r.id) };
        if let Ok(body) = serde_json::to_vec_pretty(r) {
            let _ = write_private(&dir.join(name), &body);
        }
    }

    /// The report kept for migration `id`, if any.
    pub(crate) fn report_of(&self, id: &str) -> Option<Report> {
        let b = std::fs::read(self.reports_dir().join(format!("{id}.json"))).ok()?;
        serde_json::from_slice(&b).ok()
    }

    pub(crate) fn create(&self, mut spec: PartitionSpec) -> Result<Response> {
        spec.validate().context("invalid partition spec")?;
        self.await_departure(&spec.name);
        if self.parts().contains_key(&spec.name) {
            bail!("partition {} exists on {} already", spec.name, self.opts.host);
        }
        if self.migrations_of(&spec.name) > 0 {
            bail!("partition {} is arriving here by migration", spec.name);
        }
        let _alloc = spec.isolation.userns.is_some().then(|| lock(&self.userns_alloc));
        self.user_namespace(&mut spec)?;
        let plumbing = Plumbing::create(&self.ctx, &spec, true).with_context(|| format!("partition {}: plumbing", spec.name))?;
        let pid = match partition::start_hiding(&self.ctx, &spec, &plumbing, &self.opts.hide) {
            Ok(pid) => pid,
            Err(e) => {
                let _ = plumbing.destroy();
                return Err(anyhow!(e).context(format!("partition {}: start", spec.name)));
            }
        };
        self.save_spec(&spec)?;
        self.save_init(&spec.name, pid);
        let e = Entry { spec: spec.clone(), plumbing, pid: Some(pid), busy: false, migration: None, filling: None };
        let info = self.info(&e);
        self.parts().insert(spec.name.clone(), e);
        tracing::info!(partition = %spec.name, pid, "partition started");
        Ok(Response::Partition(Box::new(info)))
    }

    /// Gives a `--userns` partition being created its id range: the first
    /// free one from the configured base, or the one its spec names if no
    /// other partition here maps any of it; then its volumes' files
    /// become the range's (root's files its root's), so that they are
    /// the partition's to write. The range is recorded in the spec, which
    /// a restart of the partition or of lpmd reads back.
    fn user_namespace(&self, spec: &mut PartitionSpec) -> Result<()> {
        let Some(mut ns) = spec.isolation.userns else { return Ok(()) };
        let used: Vec<UserNs> = self.parts().values().filter_map(|e| e.spec.isolation.userns).collect();
        if ns.first == 0 {
            ns = lpm_host::isolation::allocate(self.opts.userns_base, &used, &lpm_host::isolation::host_subid_ranges())
                .ok_or_else(|| anyhow!("partition {}: no free user namespace id range from {}", spec.name, self.opts.userns_base))?;
        } else if let Some(other) = used.iter().find(|u| u.range().start < ns.range().end && ns.range().start < u.range().end) {
            bail!("partition {}: user namespace ids from {} overlap another partition's, from {}", spec.name, ns.first, other.first);
        }
        spec.isolation.userns = Some(ns);
        for v in &spec.volumes {
            let n = lpm_host::isolation::shift_ownership(v, ns)
                .with_context(|| format!("partition {}: give volume {} to user namespace ids from {}", spec.name, v.display(), ns.first))?;
            tracing::info!(partition = %spec.name, volume = %v.display(), first = ns.first, changed = n, "volume owned by the user namespace");
        }
        Ok(())
    }

    /// Unsettled migrations of partition `name` this host takes part in.
    pub(crate) fn migrations_of(&self, name: &str) -> usize {
        lock(&self.migrations).values().filter(|l| l.partition() == name).count()
    }

    pub(crate) fn stop(&self, name: &str) -> Result<Response> {
        let (pid, plumbing) = {
            let mut parts = self.parts();
            let e = parts.get_mut(name).ok_or_else(|| anyhow!("no partition {name:?} on {}", self.opts.host))?;
            if let Some(id) = &e.migration {
                bail!("partition {name} is being migrated (migration {id})");
            }
            if e.busy {
                bail!("partition {name} is being stopped or started");
            }
            e.busy = true;
            (e.pid, Plumbing::open(&self.ctx, &e.spec))
        };
        let res = match (pid, plumbing) {
            (Some(pid), Ok(plumbing)) => partition::stop(pid, &plumbing, Duration::from_secs(5)).map(|_| ()).map_err(anyhow::Error::from),
            (Some(_), Err(e)) => Err(anyhow::Error::from(e)),
            (None, _) => Ok(()),
        };
        if let Some(pid) = pid.filter(|_| res.is_ok()) {
            let exit = match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(st) => Exit::from_wait(&st, true),
                Err(_) => None,
            };
            self.save_exit(name, &exit.unwrap_or_else(|| Exit::unknown("its init was adopted, not started, by this lpmd", true)));
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

    pub(crate) fn start(&self, name: &str) -> Result<Response> {
        let mut parts = self.parts();
        let e = parts.get_mut(name).ok_or_else(|| anyhow!("no partition {name:?} on {}", self.opts.host))?;
        if e.busy || e.migration.is_some() || e.pid.is_some() {
            bail!("partition {name} is {}", if e.pid.is_some() { "running already" } else { "being migrated, stopped or started" });
        }
        let pid =
            partition::start_hiding(&self.ctx, &e.spec, &e.plumbing, &self.opts.hide).with_context(|| format!("start partition {name}"))?;
        e.pid = Some(pid);
        let info = self.info(e);
        drop(parts);
        self.save_init(name, pid);
        Ok(Response::Partition(Box::new(info)))
    }

    pub(crate) fn delete(&self, name: &str) -> Result<Response> {
        self.stop(name)?;
        let e = self.parts().remove(name);
        if let Some(e) = e {
            e.plumbing.destroy().with_context(|| format!("remove partition {name}"))?;
        }
        self.forget(name);
        let _ = std::fs::remove_dir_all(self.ctx.partition_dir(name));
        Ok(Response::Ok)
    }

    pub(crate) fn logs(&self, name: &str, max: u64) -> Result<Response> {
        if !self.parts().contains_key(name) {
            bail!("no partition {name:?} on {}", self.opts.host);
        }
        let path = self.ctx.console_log(name);
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let start = bytes.len().saturating_sub(max as usize);
        Ok(Response::Logs(String::from_utf8_lossy(&bytes[start..]).into_owned()))
    }

    /// A piece of partition `name`'s console log (see
    /// [`Request::LogsFrom`](crate::api::Request::LogsFrom)).
    pub(crate) fn log_chunk(&self, name: &str, offset: Option<u64>, tail_lines: Option<u64>, max: u64) -> Result<Response> {
        use std::io::{Read, Seek, SeekFrom};
        let state = {
            let parts = self.parts();
            let e = parts.get(name).ok_or_else(|| anyhow!("no partition {name:?} on {}", self.opts.host))?;
            self.info(e).state
        };
        let path = self.ctx.console_log(name);
        let mut f = std::fs::File::open(&path).with_context(|| format!("open {}", path.display()))?;
        let len = f.metadata().with_context(|| format!("stat {}", path.display()))?.len();
        // A log shorter than where the last piece ended was truncated:
        // start again from its beginning.
        let from = match offset {
            Some(o) if o <= len => o,
            Some(_) => 0,
            None => len.saturating_sub(max),
        };
        let mut buf = Vec::new();
        f.seek(SeekFrom::Start(from)).with_context(|| format!("seek {}", path.display()))?;
        f.take(max).read_to_end(&mut buf).with_context(|| format!("read {}", path.display()))?;
        let skip = match (offset, tail_lines) {
            (None, Some(n)) => tail_start(&buf, n),
            _ => 0,
        };
        let (text, used) = whole_chars(&buf[skip..]);
        let end = from + (skip + used) as u64;
        Ok(Response::LogChunk { text, end, state })
    }

    pub(crate) fn reports(&self) -> Result<Response> {
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
        out.sort_by_key(|r| r.started_unix_ms);
        Ok(Response::Reports(out))
    }

    /// Notices partitions whose init exited (a child of lpmd's, or one a
    /// restarted lpmd adopted, which pid 1 reaps).
    pub(crate) fn reap(&self) {
        let mut parts = self.parts();
        for (name, e) in parts.iter_mut().filter(|(_, e)| e.migration.is_none() && !e.busy) {
            let Some(pid) = e.pid else { continue };
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(st) => {
                    tracing::info!(partition = %name, pid, status = ?st, "partition init exited");
                    e.pid = None;
                    if let Some(exit) = Exit::from_wait(&st, false) {
                        self.save_exit(name, &exit);
                    }
                }
                Err(nix::errno::Errno::ECHILD) => {
                    if start_time(pid).is_none() {
                        tracing::info!(partition = %name, pid, "partition init exited");
                        e.pid = None;
                        self.save_exit(
                            name,
                            &Exit::unknown("its init was adopted by this lpmd, not its child: pid 1 took its status", false),
                        );
                    }
                }
                Err(_) => {}
            }
        }
    }

    /// Leaves every partition running as lpmd goes away (SIGTERM, a
    /// restart, an upgrade): `lpm partition stop` is the only way a
    /// partition stops. Each keeps its record, with its init's pid and
    /// start time, so the next lpmd adopts it; the departures under way
    /// finish first, and the partitions a migration holds are the
    /// migration's record's, which the next lpmd resumes.
    pub(crate) fn shutdown(&self) {
        let leaving: Vec<String> = lock(&self.leaving).keys().cloned().collect();
        for n in leaving {
            self.await_departure(&n);
        }
        for (name, e) in self.parts().iter() {
            match (e.pid, &e.migration) {
                (_, Some(_)) => tracing::info!(partition = %name, "left to its migration's record"),
                (Some(pid), None) => tracing::info!(partition = %name, pid, "left running for the next lpmd"),
                (None, None) => {}
            }
        }
    }
}

/// Where the last `lines` lines of `buf` begin (a last line without its
/// newline counts as a line).
fn tail_start(buf: &[u8], lines: u64) -> usize {
    if lines == 0 {
        return buf.len();
    }
    let body = buf.strip_suffix(b"\n").unwrap_or(buf);
    let mut seen = 0;
    for (i, b) in body.iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    0
}

/// `buf` as text, without a UTF-8 character its end cuts (the next piece
/// starts with it), and the number of bytes of `buf` it covers; invalid
/// bytes elsewhere become U+FFFD.
fn whole_chars(buf: &[u8]) -> (String, usize) {
    // A cut character is the start of one whose rest is missing: at most
    // three bytes from the end.
    let cut = (buf.len().saturating_sub(3)..buf.len())
        .find(|&i| std::str::from_utf8(&buf[i..]).is_err_and(|e| e.valid_up_to() == 0 && e.error_len().is_none()))
        .unwrap_or(buf.len());
    (String::from_utf8_lossy(&buf[..cut]).into_owned(), cut)
}

/// The file of a partition's record that says how its init last ended.
const EXIT_FILE: &str = "exit";

/// How the init of the partition recorded in `record_dir` last ended, if
/// it is recorded.
pub(crate) fn read_exit(record_dir: &Path) -> Option<Exit> {
    serde_json::from_slice(&std::fs::read(record_dir.join(EXIT_FILE)).ok()?).ok()
}

/// Records in `record_dir` how the partition's init ended.
pub(crate) fn write_exit(record_dir: &Path, exit: &Exit) -> Result<()> {
    let p = record_dir.join(EXIT_FILE);
    write_private(&p, &serde_json::to_vec(exit)?).with_context(|| format!("write {}", p.display()))
}

/// The init recorded for partition `name` in `record_dir`, if that very
/// process still runs.
pub(crate) fn recorded_init(record_dir: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(record_dir.join("init")).ok()?;
    let mut it = text.split_whitespace();
    let pid: i32 = it.next()?.parse().ok()?;
    let started: u64 = it.next()?.parse().ok()?;
    (start_time(pid) == Some(started)).then_some(pid)
}

/// `std::fs::write` for a record: a new file is its owner's alone.
fn write_private(path: &Path, body: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    lpm_image::private_file().write(true).create(true).truncate(true).open(path)?.write_all(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_counts_lines_from_the_end() {
        let log = b"one\ntwo\nthree\n";
        let tail = |n| std::str::from_utf8(&log[tail_start(log, n)..]).unwrap().to_string();
        assert_eq!(tail(0), "");
        assert_eq!(tail(1), "three\n");
        assert_eq!(tail(2), "two\nthree\n");
        assert_eq!(tail(3), "one\ntwo\nthree\n");
        assert_eq!(tail(9), "one\ntwo\nthree\n");
        let open = b"one\ntwo";
        assert_eq!(&open[tail_start(open, 1)..], b"two");
        assert_eq!(tail_start(b"", 3), 0);
    }

    #[test]
    fn a_cut_character_waits_for_the_next_piece() {
        let s = "a\u{e9}b".as_bytes();
        assert_eq!(whole_chars(&s[..2]), ("a".to_string(), 1));
        assert_eq!(whole_chars(s), ("a\u{e9}b".to_string(), 4));
        let mut bad = b"x\xffy".to_vec();
        bad.extend_from_slice(&"\u{e9}".as_bytes()[..1]);
        assert_eq!(whole_chars(&bad), ("x\u{fffd}y".to_string(), 3));
        // An invalid byte at the very end is no cut character: it is sent.
        assert_eq!(whole_chars(b"ok\xff"), ("ok\u{fffd}".to_string(), 3));
    }
}
