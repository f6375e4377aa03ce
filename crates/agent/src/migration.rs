//! The two ends of a live migration (DESIGN.md, "Active migration, phase
//! by phase"): the source lpmd validates, prepares the target, pre-copies
//! memory while the partition runs, freezes it, sends the rest and hands
//! it over in two phases; the target restores it ahead of "go".
//!
//! Until the source sends `Go`, any failure on either side leaves the
//! partition running on the source (thawed, network unlocked, throttle
//! lifted) and removes everything the target made. After `Go` the target
//! owns it and the source destroys its frozen copy.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use lpm_host::partition::{PartitionSpec, Plumbing};
use lpm_migrate::policy::{self, Decision, Measure};
use lpm_migrate::precopy::{PageSink, Precopy, SinkError};
use lpm_migrate::report::{self, Report};
use lpm_migrate::store::Store;
use lpm_wire::{FrameType, PagesHeader, Role};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

use crate::api::{self, Check, MigrateRequest, Mover, Progress, Response};
use crate::daemon::{Agent, StopCost};
use crate::fault;

/// How much slower the stop moves a page than a round does, until this
/// host measured its stops (see [`StopCost`]): the last round reads pages
/// scattered one by one, and the restore copies them into memory the
/// target must allocate afresh (on this VM memory the host took back
/// costs 1 to 3 ms per MiB to touch again).
const STOP_SLOWDOWN: f64 = 6.0;

/// A stop with fewer pages than this measures the fixed cost; one with
/// more, the cost per page.
const STOP_FEW_PAGES: u64 = 256;

/// The policy's guess of the stop's fixed cost before this host measured
/// one, in ms.
const STOP_FIXED_GUESS_MS: f64 = 25.0;

/// The share of the allowed downtime the fixed cost may take in the
/// policy at most: an estimate too high must not refuse a migration, nor
/// leave no room for pages.
const STOP_FIXED_SHARE: f64 = 0.6;

/// Image files travel in chunks of this size.
const CHUNK: usize = 8 << 20;

/// How long a mover waits for its peer before it gives the migration up
/// (`LPM_MOVER_TIMEOUT_MS`, 30 s by default): a dead peer or a cut link
/// ends in a rollback, not a hang.
pub fn mover_timeout() -> Duration {
    let ms = std::env::var("LPM_MOVER_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000);
    Duration::from_millis(ms)
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Pages to the target, as Pages frames on one stream.
struct WireSink<'a> {
    w: &'a mut BufWriter<TcpStream>,
    compress: Option<i32>,
    wire_bytes: u64,
    /// A failure test may corrupt frames: each is built whole first.
    faults: bool,
    frame: Vec<u8>,
}

impl PageSink for WireSink<'_> {
    fn pages(&mut self, pid: i32, vaddr: u64, data: &[u8]) -> std::result::Result<(), SinkError> {
        // A frame carries at most MAX_PAYLOAD: split long runs.
        for (i, part) in data.chunks(CHUNK).enumerate() {
            let h = PagesHeader { pid: pid as u32, count: (part.len() / 4096) as u32, vaddr: vaddr + (i * CHUNK) as u64 }.encode();
            let w = &mut *self.w;
            if !self.faults {
                // Header and pages go out as they are, uncopied.
                let n = lpm_wire::write_frame_parts(w, FrameType::Pages, &[&h, part], self.compress)
                    .map_err(|e| -> SinkError { format!("send pages of pid {pid} at {vaddr:#x}: {e}").into() })?;
                self.wire_bytes += n;
                continue;
            }
            self.frame.clear();
            lpm_wire::write_frame_parts(&mut self.frame, FrameType::Pages, &[&h, part], self.compress)
                .map_err(|e| -> SinkError { format!("frame pages of pid {pid} at {vaddr:#x}: {e}").into() })?;
            // The failure tests flip a byte here, after the checksum.
            fault::corrupt("source.pages", &mut self.frame);
            w.write_all(&self.frame).map_err(|e| -> SinkError { format!("send pages of pid {pid} at {vaddr:#x}: {e}").into() })?;
            self.wire_bytes += self.frame.len() as u64;
        }
        Ok(())
    }
}

/// A mover connection to the target.
struct Link {
    r: BufReader<TcpStream>,
    w: BufWriter<TcpStream>,
}

impl Link {
    fn open(addr: &str, key: &lpm_wire::Key, me: &str) -> Result<Link> {
        let sa =
            addr.to_socket_addrs().with_context(|| format!("resolve {addr}"))?.next().ok_or_else(|| anyhow!("no address for {addr}"))?;
        let mut s =
            TcpStream::connect_timeout(&sa, Duration::from_secs(5)).with_context(|| format!("connect to the target's mover at {addr}"))?;
        s.set_nodelay(true).ok();
        s.set_read_timeout(Some(mover_timeout())).context("set timeout")?;
        s.set_write_timeout(Some(mover_timeout())).context("set timeout")?;
        lpm_wire::handshake(&mut s, Role::Opener, key, me).with_context(|| format!("authenticate with the target at {addr}"))?;
        Ok(Link { r: BufReader::new(s.try_clone().context("clone socket")?), w: BufWriter::with_capacity(1 << 20, s) })
    }

    fn send(&mut self, m: &Mover) -> Result<()> {
        api::send(&mut self.w, m).context("send to the target")
    }

    fn recv(&mut self) -> Result<Mover> {
        match api::recv(&mut self.r, "mover message").context("receive from the target")? {
            Mover::Failed(e) => bail!("the target failed: {e}"),
            Mover::Abort(e) => bail!("the target gave up: {e}"),
            m => Ok(m),
        }
    }
}

/// Tells the CLI how it goes (best effort: a gone CLI does not stop the
/// migration).
fn progress(ctl: &mut UnixStream, p: Progress) {
    let _ = api::send(ctl, &Response::Progress(p));
}

fn volume_ids(spec: &PartitionSpec) -> Vec<(String, u64, u64)> {
    spec.volumes
        .iter()
        .map(|v| {
            let (dev, ino) = fs::metadata(v).map(|m| (m.dev(), m.ino())).unwrap_or((0, 0));
            (v.display().to_string(), dev, ino)
        })
        .collect()
}

/// The source side, run for `lpm migrate` on the control connection.
pub fn source(agent: &Arc<Agent>, req: MigrateRequest, ctl: &mut UnixStream) -> Result<Response> {
    let name = req.name.clone();
    if req.target == agent.opts.host {
        bail!("partition {name} is on {} already", req.target);
    }
    let (spec, pid, plumbing) = {
        let parts = agent.parts();
        let e = parts.get(&name).ok_or_else(|| anyhow!("no partition {name:?} on {}", agent.opts.host))?;
        let pid = e.pid.ok_or_else(|| anyhow!("partition {name} is not running (start it, or move it while stopped)"))?;
        (e.spec.clone(), pid, Plumbing::open(&agent.ctx, &e.spec)?)
    };
    agent.set_busy(&name, true)?;
    let mut run = SourceRun::new(agent, &req, spec, pid, plumbing);
    let res = run.go(ctl);
    let report = run.report(&res);
    if !matches!(res, Ok(Some(_))) {
        agent.keep_report(&report);
    }
    if let Some(link) = run.link.as_mut() {
        let _ = link.send(&Mover::Report(Box::new(report.clone())));
        let _ = link.w.flush();
    }
    match res {
        Ok(Some(checks)) => {
            agent.set_busy(&name, false).ok();
            Ok(Response::Validation(checks))
        }
        Ok(None) => Ok(Response::Report(Box::new(report))),
        Err(e) => {
            agent.set_busy(&name, false).ok();
            Err(e.context(format!("migrate {name} to {}", req.target)))
        }
    }
}

/// What the source knows as a migration runs.
struct SourceRun<'a> {
    agent: &'a Arc<Agent>,
    req: &'a MigrateRequest,
    spec: PartitionSpec,
    pid: i32,
    plumbing: Plumbing,
    link: Option<Link>,
    /// Extra page streams (`--streams N`: N-1 of them).
    extras: Vec<Link>,
    started: Instant,
    started_ms: u64,
    rounds: Vec<report::Round>,
    throttle_max: f64,
    step: String,
    stop: report::StopBreakdown,
    downtime: Option<Duration>,
    /// From the start to the first round.
    setup: Option<Duration>,
    wire_bytes: u64,
    /// The partition is frozen (and its network locked) on the source.
    frozen: bool,
    handed_over: bool,
    /// What the frozen dump let go of for the target (file locks, FIFO
    /// data): given back on rollback, dropped once the target owns the
    /// partition.
    handoff: Option<lpm_engine::Handoff>,
}

impl<'a> SourceRun<'a> {
    fn new(agent: &'a Arc<Agent>, req: &'a MigrateRequest, spec: PartitionSpec, pid: i32, plumbing: Plumbing) -> SourceRun<'a> {
        SourceRun {
            agent,
            req,
            spec,
            pid,
            plumbing,
            link: None,
            extras: Vec::new(),
            started: Instant::now(),
            started_ms: unix_ms(),
            rounds: Vec::new(),
            throttle_max: 0.0,
            step: "connect".into(),
            stop: report::StopBreakdown::default(),
            downtime: None,
            setup: None,
            wire_bytes: 0,
            frozen: false,
            handed_over: false,
            handoff: None,
        }
    }

    fn link(&mut self) -> &mut Link {
        self.link.as_mut().expect("connected")
    }

    /// Runs the migration; `Ok(Some(checks))` after --validate-only.
    fn go(&mut self, ctl: &mut UnixStream) -> Result<Option<Vec<Check>>> {
        let res = self.phases(ctl).map_err(|e| self.why_broken(e));
        if res.is_err() && !self.handed_over {
            self.roll_back();
        }
        res
    }

    /// A target that fails while we only send (pre-copy, image files)
    /// says why in a `Failed` message and closes; here that shows as a
    /// reset connection. Its reason, already in our receive queue (it left
    /// before the reset), is the cause to report: a refused checksum, a
    /// full disk. Looked for without waiting, so a healthy target that
    /// said nothing costs no time (the partition may be frozen).
    fn why_broken(&mut self, e: anyhow::Error) -> anyhow::Error {
        let Some(link) = self.link.as_mut() else { return e };
        if link.r.get_ref().set_nonblocking(true).is_err() {
            return e;
        }
        let mut why = None;
        // Frames still queued (none are expected) come before the last word.
        for _ in 0..16 {
            match api::recv::<_, Mover>(&mut link.r, "mover message") {
                Ok(Mover::Failed(w)) => {
                    why = Some(w);
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        let _ = link.r.get_ref().set_nonblocking(false);
        match why {
            Some(w) => e.context(format!("the target failed: {w}")),
            None => e,
        }
    }

    fn phases(&mut self, ctl: &mut UnixStream) -> Result<Option<Vec<Check>>> {
        let name = self.spec.name.clone();
        progress(ctl, Progress { phase: "validate".into(), note: format!("connecting to {}", self.req.target), ..blank() });
        self.link = Some(Link::open(&self.req.target_addr, &self.agent.opts.key, &self.agent.opts.host)?);
        let connected = self.started.elapsed();
        self.step = "validate".into();
        let memory_current = self.plumbing.cgroup().memory_current().unwrap_or(0);
        // The partition may use anything this CPU offers.
        let cpu = prost::Message::encode_to_vec(&lpm_engine::cpu::this_host());
        let v = Mover::Validate { spec: self.spec.clone(), memory_current, cpu, volumes: volume_ids(&self.spec) };
        self.link().send(&v)?;
        let checks = match self.link().recv()? {
            Mover::Validated(c) => c,
            other => bail!("the target answered validation with {other:?}"),
        };
        let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)).collect();
        if self.req.validate_only || !failed.is_empty() {
            self.link().send(&Mover::Abort(if failed.is_empty() { "validation only".into() } else { "validation failed".into() }))?;
            if failed.is_empty() {
                return Ok(Some(checks));
            }
            bail!("validation failed: {}", failed.join("; "));
        }
        let validated = self.started.elapsed();
        self.step = "prepare".into();
        progress(ctl, Progress { phase: "prepare".into(), note: format!("preparing {name} on {}", self.req.target), ..blank() });
        let spec = self.spec.clone();
        self.link().send(&Mover::Prepare(spec))?;
        let id = match self.link().recv()? {
            Mover::Prepared { id } => id,
            other => bail!("the target answered prepare with {other:?}"),
        };
        for n in 1..self.req.streams.max(1) {
            let mut l = Link::open(&self.req.target_addr, &self.agent.opts.key, &self.agent.opts.host)
                .with_context(|| format!("open page stream {}", n + 1))?;
            l.send(&Mover::Attach { id: id.clone() })?;
            self.extras.push(l);
        }
        self.step = "precopy".into();
        self.setup = Some(self.started.elapsed());
        tracing::debug!(
            partition = %name,
            connect_ms = connected.as_secs_f64() * 1e3,
            validate_ms = (validated - connected).as_secs_f64() * 1e3,
            prepare_ms = (self.started.elapsed() - validated).as_secs_f64() * 1e3,
            "set up"
        );
        // A partition that just arrived may still be filling its memory
        // lazily: its areas are registered with that userfaultfd until then.
        if let Some(h) = self.agent.take_filling(&self.spec.name) {
            let _ = h.join();
        }
        let t_track = Instant::now();
        let pids = self.plumbing.cgroup().procs().context("list the partition's processes")?;
        let mut pre = Precopy::start(&pids).context("start dirty-page tracking")?;
        tracing::debug!(partition = %name, ms = t_track.elapsed().as_secs_f64() * 1e3, "tracking started");
        let max_downtime = Duration::from_millis(self.req.max_downtime_ms);
        // What the last stops from this host cost besides their pages.
        let cost: StopCost = *self.agent.stop_cost.lock().unwrap_or_else(|e| e.into_inner());
        let fixed = cost.fixed_ms.unwrap_or(STOP_FIXED_GUESS_MS);
        let limits = policy::Limits {
            max_downtime,
            max_total: Duration::from_secs(self.req.max_total_s),
            force_switch: self.req.force,
            fixed_cost: Duration::from_secs_f64(fixed / 1e3).min(max_downtime.mul_f64(STOP_FIXED_SHARE)),
            ..Default::default()
        };
        let base_cpus = self.spec.cpus.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0));
        let mut m = Measure::default();
        let mut wire_rate = 0.0;
        let mut smaps_hint;
        loop {
            m.round += 1;
            // A sending thread per stream (see Precopy::round_parallel).
            let mut sinks = self.stream_sinks();
            let mut refs: Vec<&mut (dyn PageSink + Send)> = sinks.iter_mut().map(|s| s as &mut (dyn PageSink + Send)).collect();
            let st = pre.round_parallel(&mut refs).with_context(|| format!("pre-copy round {}", m.round))?;
            let wire: u64 = sinks.iter().map(|s| s.wire_bytes).sum();
            drop(sinks);
            let t_barrier = Instant::now();
            self.end_round(m.round)?;
            // While the target stores what is still in flight, this side
            // collects what the round left dirty and reads the areas'
            // flags a stop would need (both CPU of its own, on a machine
            // where the target's work takes the other CPUs).
            let c = pre.collect().with_context(|| format!("collect dirty pages after round {}", m.round))?;
            let collected = t_barrier.elapsed();
            smaps_hint = self.smaps_hint();
            let hinted = t_barrier.elapsed();
            self.round_done(m.round)?;
            let barrier = t_barrier.elapsed();
            fault::point("source.round")?;
            self.link().w.flush().context("send pages")?;
            self.wire_bytes += wire;
            let secs = st.duration.as_secs_f64().max(1e-6);
            // Bandwidth from rounds big enough to measure; dirty rate from
            // what the round found written since the previous one.
            if st.bytes >= (1 << 20) || m.bandwidth == 0.0 {
                wire_rate = (st.bytes as f64 / secs).max(1.0);
            }
            // The policy weighs what is left against the stop's own rate:
            // as measured in this host's last stops, never faster than
            // the rounds allow (see STOP_SLOWDOWN).
            m.bandwidth = wire_rate / STOP_SLOWDOWN;
            if let Some(per) = cost.ms_per_page.filter(|&c| c > 0.0) {
                m.bandwidth = m.bandwidth.min(lpm_migrate::precopy::PAGE as f64 / (per / 1e3));
            }
            tracing::debug!(
                partition = %name,
                round = m.round,
                collect_ms = collected.as_secs_f64() * 1e3,
                smaps_ms = (hinted - collected).as_secs_f64() * 1e3,
                barrier_ms = barrier.as_secs_f64() * 1e3,
                "round ended"
            );
            m.remaining = c.pending;
            m.sent_last = st.pages;
            m.dirty_rate = c.dirty_rate();
            m.elapsed = self.started.elapsed();
            m.history.push(m.remaining);
            self.rounds.push(report::Round::from_stats(&st, wire, m.dirty_rate, m.throttle));
            progress(
                ctl,
                Progress {
                    phase: "precopy".into(),
                    round: m.round,
                    dirty_pages: m.remaining,
                    sent_bytes: self.wire_bytes,
                    rate: wire_rate,
                    throttle: m.throttle,
                    note: String::new(),
                },
            );
            match policy::decide(&m, &limits) {
                Decision::Continue => {}
                Decision::Throttle(t) => {
                    m.throttle = t;
                    m.rounds_at_throttle = 0;
                    self.throttle_max = self.throttle_max.max(t);
                    self.plumbing.cgroup().set_cpus(Some((base_cpus * (1.0 - t)).max(0.01))).context("throttle the partition's CPU")?;
                }
                Decision::Switchover => break,
                Decision::Abort(why) => bail!("{why}"),
            }
            m.rounds_at_throttle += 1;
        }
        self.switchover(ctl, pre, smaps_hint)?;
        Ok(None)
    }

    /// The areas' flags of every process of the partition, read while it
    /// runs, for the dump of a stop: smaps walks every page table, too
    /// slow for the stop itself. The dump uses a process's entry only if
    /// its areas are still the same then.
    fn smaps_hint(&self) -> std::collections::HashMap<i32, Vec<lpm_engine::proc::MapEntry>> {
        let mut hint = std::collections::HashMap::new();
        for pid in self.plumbing.cgroup().procs().unwrap_or_default() {
            if let Ok(m) = lpm_engine::proc::smaps(pid) {
                hint.insert(pid, m);
            }
        }
        hint
    }

    fn switchover(
        &mut self,
        ctl: &mut UnixStream,
        mut pre: Precopy,
        smaps_hint: std::collections::HashMap<i32, Vec<lpm_engine::proc::MapEntry>>,
    ) -> Result<()> {
        self.step = "switchover".into();
        progress(ctl, Progress { phase: "switchover".into(), note: "freezing".into(), ..blank() });
        let dir = scratch_dir(self.agent, "out", &self.spec.name);
        let _ = fs::remove_dir_all(&dir);
        // However the switchover ends, its images go.
        struct Scratch<'p>(&'p Path);
        impl Drop for Scratch<'_> {
            fn drop(&mut self) {
                let _ = fs::remove_dir_all(self.0);
            }
        }
        let _scratch = Scratch(&dir);
        tracing::debug!(partition = %self.spec.name, since_start_ms = self.started.elapsed().as_secs_f64() * 1e3, "stopping");
        let t_stop = Instant::now();
        self.plumbing.lock_network().context("lock the partition's network")?;
        self.frozen = true;
        // Stopped first, then the trackers' last word (nothing runs, so
        // nothing writes behind it) and the pages it names, sent as in every
        // round, then the dump of the rest of the state.
        let locked = t_stop.elapsed();
        // Whether the init still lives in the partition's namespace (the
        // one with its NIC, which the target brings) or made one of its own.
        let ino = |p: &Path| fs::metadata(p).map(|m| m.ino()).ok();
        let external_netns = ino(Path::new(&format!("/proc/{}/ns/net", self.pid))).is_some()
            && ino(Path::new(&format!("/proc/{}/ns/net", self.pid))) == ino(&self.plumbing.netns().path());
        let stopped = lpm_engine::stop_tree(self.pid).context("stop the partition")?;
        let at_stop = t_stop.elapsed();
        // The last round is small: the main stream carries it.
        let mut sink = self.stream_sinks().into_iter().next().expect("the main stream");
        let done = pre.finish(&mut sink).context("send the pages written since the last round")?;
        let (last, held) = (done.stats, done.held);
        let hot = done.last_sent.into_iter().map(|(pid, r)| (pid as u32, r)).collect();
        let wire = sink.wire_bytes;
        drop(sink);
        self.wire_bytes += wire;
        // Every stream's pages are stored before the restore reads them.
        self.round_barrier(last.round)?;
        let at_collect = t_stop.elapsed();
        let opts = lpm_engine::DumpOptions {
            after: lpm_engine::After::Frozen,
            tcp_established: true,
            precopied: held,
            external_netns,
            smaps_hint,
        };
        let mut stats = stopped.dump(&dir, &opts).context("checkpoint the stopped partition")?;
        self.handoff = Some(std::mem::take(&mut stats.handoff));
        tracing::debug!(
            partition = %self.spec.name,
            lock_ms = locked.as_secs_f64() * 1e3,
            stop_ms = (at_stop - locked).as_secs_f64() * 1e3,
            last_round_ms = (at_collect - at_stop).as_secs_f64() * 1e3,
            last_round_pages = last.pages,
            dump_ms = (t_stop.elapsed() - at_collect).as_secs_f64() * 1e3,
            "switchover steps"
        );
        self.stop.freeze_ms = t_stop.elapsed().as_secs_f64() * 1e3;
        self.stop.final_pages = last.pages + stats.pages;
        let t = Instant::now();
        fault::point("source.frozen")?;
        let (files, bytes) = self.send_images(&dir)?;
        self.stop.state_image_bytes = bytes;
        self.link().send(&Mover::Restore { files, external_netns, hot })?;
        self.link().w.flush().context("send restore")?;
        self.stop.transfer_ms = t.elapsed().as_secs_f64() * 1e3;
        let _ = fs::remove_dir_all(&dir);
        let t = Instant::now();
        match self.link().recv()? {
            Mover::Restored { restore_ms } => self.stop.restore_ms = restore_ms,
            other => bail!("the target answered restore with {other:?}"),
        }
        self.step = "handover".into();
        // Phase two: from here the target owns the partition. The record
        // on disk says so before "go" leaves.
        let mark = self.agent.opts.dir.join("partitions").join(&self.spec.name).join("handed-over");
        fs::write(&mark, format!("{}\n", self.req.target)).with_context(|| format!("record the handover in {}", mark.display()))?;
        self.handed_over = true;
        // No rollback from here: the locks and FIFO data are the target's,
        // and no descriptor of ours may keep a FIFO open behind its copy.
        self.handoff = None;
        fault::point("source.go")?;
        self.link().send(&Mover::Go)?;
        match self.link().recv() {
            Ok(Mover::Running) => {}
            Ok(other) => tracing::warn!(?other, "unexpected answer to go"),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "no confirmation after go; the target owns the partition"),
        }
        self.stop.handover_ms = t.elapsed().as_secs_f64() * 1e3 - self.stop.restore_ms;
        self.downtime = Some(t_stop.elapsed());
        self.learn_stop_cost();
        // The frozen copy here is given up: killed, its init reaped, its
        // namespaces and cgroup removed, after the report (tens of
        // milliseconds the migration need not wait for). Until then the
        // name stays taken here: a migration back waits for it.
        let agent = self.agent.clone();
        let (name, pid, spec) = (self.spec.name.clone(), self.pid, self.spec.clone());
        self.agent.depart(&self.spec.name, move || {
            let t = Instant::now();
            match Plumbing::open(&agent.ctx, &spec) {
                Ok(plumbing) => {
                    let cg = plumbing.cgroup();
                    let _ = cg.kill();
                    let _ = cg.thaw(Duration::from_secs(2));
                    let _ = cg.wait_empty(Duration::from_secs(5));
                    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
                    if let Err(e) = plumbing.destroy() {
                        tracing::warn!(partition = %name, error = %e, "remove the copy that left");
                    }
                }
                Err(e) => tracing::warn!(partition = %name, error = %e, "open the plumbing of the copy that left"),
            }
            // The trackers go last: their areas went with the source copy,
            // so nothing is left to unregister.
            drop(pre);
            // Only this host's record goes: the console log on shared
            // storage moved with the partition.
            let _ = fs::remove_dir_all(agent.opts.dir.join("partitions").join(&name));
            tracing::debug!(partition = %name, ms = t.elapsed().as_secs_f64() * 1e3, "source copy removed");
        });
        progress(ctl, Progress { phase: "done".into(), note: format!("running on {}", self.req.target), ..blank() });
        Ok(())
    }

    /// Updates the host's model of a stop from this one: a stop with few
    /// pages measures the fixed cost, one with many the cost per page
    /// beyond it.
    fn learn_stop_cost(&self) {
        let Some(down) = self.downtime else { return };
        let down_ms = down.as_secs_f64() * 1e3;
        let pages = self.stop.final_pages;
        let avg = |old: Option<f64>, new: f64| Some(old.map_or(new, |o| (o + new) / 2.0));
        let mut c = self.agent.stop_cost.lock().unwrap_or_else(|e| e.into_inner());
        if pages < STOP_FEW_PAGES {
            c.fixed_ms = avg(c.fixed_ms, down_ms);
        } else {
            let beyond = (down_ms - c.fixed_ms.unwrap_or(STOP_FIXED_GUESS_MS)).max(0.0);
            c.ms_per_page = avg(c.ms_per_page, beyond / pages as f64);
        }
        tracing::debug!(partition = %self.spec.name, down_ms, pages, model = ?*c, "stop cost learned");
    }

    /// A sink per stream, for a sending thread each.
    fn stream_sinks(&mut self) -> Vec<WireSink<'_>> {
        let (compress, faults) = (self.req.compress, fault::watched("source.pages"));
        let main = std::iter::once(&mut self.link.as_mut().expect("connected").w);
        main.chain(self.extras.iter_mut().map(|l| &mut l.w))
            .map(|w| WireSink { w, compress, wire_bytes: 0, faults, frame: Vec::new() })
            .collect()
    }

    /// Waits until the target stored every page of the round that went on
    /// the extra streams: a page resent in the next round on another stream
    /// must not be overtaken by its older copy.
    fn round_barrier(&mut self, round: u32) -> Result<()> {
        self.end_round(round)?;
        self.round_done(round)
    }

    /// The first half of [`SourceRun::round_barrier`]: the end of round
    /// `round` on every stream.
    fn end_round(&mut self, round: u32) -> Result<()> {
        // The main stream too: what the sockets still buffer would
        // otherwise be stored during the stop, ahead of its own pages
        // (megabytes, tens of milliseconds).
        self.link().send(&Mover::RoundEnd { round })?;
        for l in &mut self.extras {
            l.send(&Mover::RoundEnd { round })?;
        }
        Ok(())
    }

    /// The second half: every stream's answer that all of round `round`
    /// is stored.
    fn round_done(&mut self, round: u32) -> Result<()> {
        let main = std::iter::once(self.link.as_mut().expect("connected"));
        for (n, l) in main.chain(self.extras.iter_mut()).enumerate() {
            match l.recv().with_context(|| format!("page stream {}", n + 1))? {
                Mover::RoundDone { round: r } if r == round => {}
                other => bail!("page stream {} answered the end of round {round} with {other:?}", n + 1),
            }
        }
        Ok(())
    }

    /// Sends every file of the image directory as Blob frames.
    fn send_images(&mut self, dir: &Path) -> Result<(u32, u64)> {
        let mut frames = 0u32;
        let mut bytes = 0u64;
        let mut names: Vec<PathBuf> =
            fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))?.flatten().map(|e| e.path()).collect();
        names.sort();
        let compress = self.req.compress;
        // One buffer for every file, no larger than the largest needs:
        // the images of a stop are tens of kilobytes, and fresh megabytes
        // cost page faults inside the downtime.
        let mut buf = Vec::new();
        for p in names {
            let name = p.file_name().and_then(|n| n.to_str()).ok_or_else(|| anyhow!("odd image file name {}", p.display()))?.to_string();
            let f = File::open(&p).with_context(|| format!("open {}", p.display()))?;
            let len = f.metadata().map(|m| m.len()).unwrap_or(0);
            if buf.len() < (len as usize).min(CHUNK) {
                buf.resize((len as usize).min(CHUNK), 0);
            }
            let mut off = 0u64;
            loop {
                let n = if buf.is_empty() { 0 } else { f.read_at(&mut buf, off).with_context(|| format!("read {}", p.display()))? };
                let head = blob_head(&name, off);
                let w = lpm_wire::write_frame_parts(&mut self.link().w, FrameType::Blob, &[&head, &buf[..n]], compress)
                    .context("send image file")?;
                self.wire_bytes += w;
                bytes += n as u64;
                frames += 1;
                off += n as u64;
                if n == 0 || off >= len {
                    break;
                }
            }
        }
        Ok((frames, bytes))
    }

    /// Before "go": the partition stays (or becomes again) what it was on
    /// the source.
    fn roll_back(&mut self) {
        let farewell = |link: &mut Option<Link>, step: &str| {
            if let Some(link) = link.as_mut() {
                // A farewell, best effort: each write left (this abort, the
                // report, the flush on drop) would wait a full mover timeout
                // for a peer that is gone.
                let _ = link.w.get_ref().set_write_timeout(Some(Duration::from_millis(500)));
                let _ = link.send(&Mover::Abort(format!("the source gave up at {step}")));
                let _ = link.w.flush();
            }
        };
        let handoff = self.handoff.take().unwrap_or_default();
        // The partition first: before "go" the target never runs its copy,
        // so nothing waits on telling it, and over a dead link telling it
        // takes a whole mover timeout the partition would spend frozen.
        // Unless the dump let go of file locks: the target's copy holds
        // them until it hears of the abort, so it hears first (a write
        // bounded by its timeout above).
        let told = self.frozen && handoff.locks() > 0;
        if told {
            farewell(&mut self.link, &self.step);
        }
        if self.frozen {
            // A lock the target's copy still holds is tried again until the
            // target gives its copy up, which it does at the latest one
            // mover timeout after it last heard from us.
            if let Err(e) = lpm_engine::thaw_tree(self.pid, handoff, mover_timeout()) {
                let error = format!("{:#}", anyhow::Error::from(e));
                tracing::error!(partition = %self.spec.name, pid = self.pid, error, "rollback: the partition did not get back all it held");
            }
            let _ = self.plumbing.cgroup().thaw(Duration::from_secs(5));
            let _ = self.plumbing.unlock_network();
        }
        let _ = self.plumbing.cgroup().set_cpus(self.spec.cpus);
        if !told {
            farewell(&mut self.link, &self.step);
        }
    }

    fn report(&self, res: &Result<Option<Vec<Check>>>) -> Report {
        let total = self.started.elapsed();
        let outcome = match res {
            Ok(_) => report::Outcome::Completed,
            Err(e) if self.step == "precopy" && format!("{e}").contains("did not converge") => {
                report::Outcome::Aborted { reason: format!("{e:#}"), step: self.step.clone() }
            }
            Err(e) => report::Outcome::Failed { error: format!("{e:#}"), step: self.step.clone() },
        };
        Report {
            partition: self.spec.name.clone(),
            source: self.agent.opts.host.clone(),
            target: self.req.target.clone(),
            started_unix_ms: self.started_ms,
            outcome,
            total_ms: total.as_secs_f64() * 1e3,
            setup_ms: self.setup.map(|d| d.as_secs_f64() * 1e3).unwrap_or(total.as_secs_f64() * 1e3),
            downtime_ms: self.downtime.map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0),
            rounds: self.rounds.clone(),
            stop: self.downtime.map(|_| self.stop.clone()),
            bytes_total: self.wire_bytes,
            throughput_bytes_per_s: self.wire_bytes as f64 / total.as_secs_f64().max(1e-6),
            max_throttle: self.throttle_max,
            streams: self.req.streams.max(1),
            compression: self.req.compress.map(|l| format!("zstd:{l}")).unwrap_or_else(|| "none".into()),
        }
    }
}

/// Where a migration's images live while it runs: in memory (tmpfs), both
/// for speed and because the target's page store places each page at its
/// virtual address, an offset ext4 files cannot reach.
fn scratch_dir(agent: &Agent, way: &str, name: &str) -> PathBuf {
    PathBuf::from("/dev/shm").join(format!("{}-{}-{way}-{name}-{}", agent.opts.prefix, agent.opts.host, unix_ms()))
}

fn blank() -> Progress {
    Progress { phase: String::new(), round: 0, dirty_pages: 0, sent_bytes: 0, rate: 0.0, throttle: 0.0, note: String::new() }
}

/// A Blob payload: u16 name length, the name, u64 offset, the bytes.
fn blob_head(name: &str, off: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(10 + name.len());
    p.extend_from_slice(&(name.len() as u16).to_le_bytes());
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&off.to_le_bytes());
    p
}

/// Splits a Blob payload; the name must be a plain file name.
fn unblob(p: &[u8]) -> Result<(&str, u64, &[u8])> {
    let n = u16::from_le_bytes(p.get(..2).ok_or_else(|| anyhow!("short image frame"))?.try_into().expect("2 bytes")) as usize;
    let name = std::str::from_utf8(p.get(2..2 + n).ok_or_else(|| anyhow!("short image frame"))?).context("image file name")?;
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("refused image file name {name:?}");
    }
    let off = u64::from_le_bytes(p.get(2 + n..10 + n).ok_or_else(|| anyhow!("short image frame"))?.try_into().expect("8 bytes"));
    Ok((name, off, &p[10 + n..]))
}

/// What the target made for an incoming partition; dropped before "go",
/// it removes all of it.
struct Incoming<'a> {
    spec: PartitionSpec,
    plumbing: Option<Plumbing>,
    /// The plumbing, while it is being made (and whether the vessel went
    /// into its cgroups).
    preparing: Option<std::thread::JoinHandle<Result<(Plumbing, bool)>>>,
    dir: PathBuf,
    store: Arc<Mutex<Store>>,
    /// Its name in the agent's table of incoming migrations.
    id: String,
    agent: &'a Agent,
    held: Option<lpm_engine::Held>,
    /// Made at prepare, in the partition's cgroups: the restore clones the
    /// root from it and writes no cgroup.procs inside the downtime.
    vessel: Option<lpm_engine::Vessel>,
}

impl Incoming<'_> {
    /// Waits for the plumbing being made and keeps it; a vessel that did
    /// not get into its cgroups goes.
    fn ready(&mut self) -> Result<()> {
        let Some(h) = self.preparing.take() else { return Ok(()) };
        let (p, placed) = h.join().map_err(|_| anyhow!("preparing partition {} panicked", self.spec.name))??;
        if !placed {
            self.vessel = None;
        }
        self.plumbing = Some(p);
        Ok(())
    }
}

impl Drop for Incoming<'_> {
    fn drop(&mut self) {
        self.agent.incoming.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.id);
        // What is still being made is removed with the rest.
        match self.preparing.take().map(|h| h.join()) {
            Some(Ok(Ok((p, _)))) => self.plumbing = Some(p),
            Some(Ok(Err(e))) => tracing::warn!(partition = %self.spec.name, error = format!("{e:#}"), "prepare the incoming partition"),
            _ => {}
        }
        // Kills and reaps every restored task when not released, and the
        // vessel, before their cgroups go.
        self.held.take();
        self.vessel.take();
        if let Some(p) = self.plumbing.take() {
            if let Err(e) = p.destroy() {
                tracing::warn!(partition = %self.spec.name, error = %e, "remove the incoming partition");
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn validate(agent: &Agent, spec: &PartitionSpec, memory: u64, volumes: &[(String, u64, u64)], cpu: &[u8]) -> Vec<Check> {
    let mut out = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| out.push(Check { name: name.into(), ok, detail });
    {
        let parts = agent.parts();
        let clash = parts.contains_key(&spec.name);
        check("name", !clash, if clash { format!("a partition named {} exists here", spec.name) } else { "free".into() });
        let ip = parts.values().find(|e| e.spec.ip.is_some() && e.spec.ip == spec.ip);
        check(
            "ip",
            ip.is_none(),
            ip.map(|e| format!("{} uses {}", e.spec.name, e.spec.ip.clone().unwrap_or_default())).unwrap_or_else(|| "free".into()),
        );
        let mac = parts.values().find(|e| e.spec.mac.is_some() && e.spec.mac == spec.mac);
        check("mac", mac.is_none(), mac.map(|e| format!("{} uses that MAC", e.spec.name)).unwrap_or_else(|| "free".into()));
    }
    let avail = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| l.strip_prefix("MemAvailable:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok()))
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    let need = spec.memory.unwrap_or(memory).max(memory);
    check("memory", avail > need, format!("{} MiB available, {} MiB needed", avail >> 20, need >> 20));
    let missing = agent.missing_kernel_features();
    check(
        "kernel",
        missing.is_empty(),
        if missing.is_empty() { "every feature present".into() } else { format!("missing: {}", missing.join(", ")) },
    );
    // Checked again at restore against the image; here before anything
    // moves, against the whole source CPU.
    match <lpm_image::CpuInfo as prost::Message>::decode(cpu) {
        Ok(src) if !src.arch.is_empty() => {
            let here = lpm_engine::cpu::this_host();
            match lpm_engine::cpu::check(&src, &here) {
                Ok(()) => {
                    check("cpu", true, format!("this CPU holds the source's state (xcr0 {:#x}, {} flags)", src.xcr0, src.flags.len()))
                }
                Err(e) => check("cpu", false, e.to_string()),
            }
        }
        Ok(_) => check("cpu", false, "the source sent no CPU description".into()),
        Err(e) => check("cpu", false, format!("unreadable CPU description from the source: {e}")),
    }
    for (path, dev, ino) in volumes {
        let here = fs::metadata(path).map(|m| (m.dev(), m.ino()));
        let ok = matches!(here, Ok((d, i)) if d == *dev && i == *ino);
        check(
            "volume",
            ok,
            match here {
                Ok(_) if ok => format!("{path} is the same volume"),
                Ok(_) => format!("{path} is another filesystem object here (not shared storage)"),
                Err(e) => format!("{path}: {e}"),
            },
        );
    }
    out
}

/// The target side, on one mover connection.
pub fn target(agent: &Agent, s: TcpStream, peer: &str) -> Result<()> {
    // Small: a frame's payload larger than what is buffered is read
    // straight into the frame reader's buffer, and what was buffered
    // is copied once more.
    let mut r = BufReader::with_capacity(64 << 10, s.try_clone().context("clone socket")?);
    let mut w = BufWriter::new(s);
    let mut inc: Option<Incoming> = None;
    let mut frames = lpm_wire::FrameReader::new();
    let res = (|| -> Result<()> {
        loop {
            let (kind, payload) = frames.read(&mut r).context("receive from the source")?;
            match kind {
                FrameType::Pages => {
                    fault::point("target.pages")?;
                    let i = inc.as_mut().ok_or_else(|| anyhow!("pages before prepare"))?;
                    let (h, data) = PagesHeader::decode(payload).ok_or_else(|| anyhow!("malformed pages frame"))?;
                    // The store's lock only to find the file: the other
                    // streams store meanwhile.
                    let file = i.store.lock().unwrap_or_else(|e| e.into_inner()).file(h.pid as i32).context("store pages")?;
                    file.write(h.vaddr, data).context("store pages")?;
                    continue;
                }
                FrameType::Blob => {
                    fault::point("target.image")?;
                    let i = inc.as_mut().ok_or_else(|| anyhow!("image file before prepare"))?;
                    let (name, off, data) = unblob(payload)?;
                    let path = i.dir.join(name);
                    let file = fs::OpenOptions::new()
                        .create(true)
                        .write(true)
                        .truncate(false)
                        .open(&path)
                        .with_context(|| format!("create {}", path.display()))?;
                    file.write_all_at(data, off).with_context(|| format!("write {}", path.display()))?;
                    continue;
                }
                FrameType::Control => {}
                other => bail!("unexpected {other:?} frame"),
            }
            let m: Mover = api::decode(payload, "mover message")?;
            match m {
                Mover::Validate { spec, memory_current, volumes, cpu } => {
                    // A copy that left here a moment ago may still be going.
                    agent.await_departure(&spec.name);
                    let checks = validate(agent, &spec, memory_current, &volumes, &cpu);
                    api::send(&mut w, &Mover::Validated(checks))?;
                }
                Mover::Prepare(spec) => {
                    spec.validate().context("invalid partition spec")?;
                    let dir = scratch_dir(agent, "in", &spec.name);
                    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
                    let store = Arc::new(Mutex::new(Store::create(&dir).context("page store")?));
                    let id = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    agent.incoming.lock().unwrap_or_else(|e| e.into_inner()).insert(id.clone(), store.clone());
                    // The vessel is spawned here, by the thread that will
                    // restore (it traces it). The namespaces, NIC and
                    // cgroup are made, and the vessel put into the cgroup,
                    // while the first round's pages arrive; the end of
                    // that round waits for them. Without a vessel the
                    // restore only takes longer.
                    let vessel = lpm_engine::Vessel::spawn()
                        .map_err(|e| tracing::warn!(partition = %spec.name, error = %e, "no restore vessel"))
                        .ok();
                    let vessel_pid = vessel.as_ref().map(|v| v.pid());
                    let (ctx, sp) = (agent.ctx.clone(), spec.clone());
                    let preparing = std::thread::spawn(move || -> Result<(Plumbing, bool)> {
                        let p = Plumbing::create(&ctx, &sp, false).with_context(|| format!("prepare partition {}", sp.name))?;
                        let placed = vessel_pid.is_some_and(|pid| {
                            lpm_engine::Vessel::place(pid, &p.cgroup().dirs())
                                .map_err(|e| tracing::warn!(partition = %sp.name, error = %e, "no restore vessel"))
                                .is_ok()
                        });
                        Ok((p, placed))
                    });
                    inc = Some(Incoming {
                        spec: spec.clone(),
                        plumbing: None,
                        preparing: Some(preparing),
                        dir,
                        store,
                        id: id.clone(),
                        agent,
                        held: None,
                        vessel,
                    });
                    api::send(&mut w, &Mover::Prepared { id })?;
                }
                Mover::Restore { external_netns, hot, .. } => {
                    fault::point("target.restore")?;
                    let i = inc.as_mut().ok_or_else(|| anyhow!("restore before prepare"))?;
                    let t = Instant::now();
                    i.ready()?;
                    let p = i.plumbing.as_ref().expect("prepared");
                    let opts = lpm_engine::RestoreOptions {
                        netns: if external_netns { Some(p.netns().fd().context("open the partition's network namespace")?) } else { None },
                        cgroups: p.cgroup().dirs(),
                        defer_tcp: true,
                        // The lazy fill keeps the stop from growing with
                        // memory; LPM_EAGER_FILL=1 in lpmd's environment
                        // copies everything during the stop instead.
                        lazy_fill: std::env::var_os("LPM_EAGER_FILL").is_none(),
                        vessel: i.vessel.take(),
                        hot,
                    };
                    i.held = Some(lpm_engine::restore_held(&i.dir, &opts).with_context(|| format!("restore partition {}", i.spec.name))?);
                    fault::point("target.restored")?;
                    api::send(&mut w, &Mover::Restored { restore_ms: t.elapsed().as_secs_f64() * 1e3 })?;
                }
                Mover::Go => {
                    fault::point("target.go")?;
                    let mut i = inc.take().ok_or_else(|| anyhow!("go before restore"))?;
                    let mut held = i.held.take().ok_or_else(|| anyhow!("go before restore"))?;
                    let plumbing = i.plumbing.take().expect("prepared");
                    // Network first: releasing the tree sends what its
                    // connections hold, which must reach their peers.
                    if let Err(e) = plumbing.unlock_network() {
                        tracing::warn!(partition = %i.spec.name, error = %e, "network unlock");
                    }
                    // The precopied pages go in after the release, on a
                    // thread of their own; first touches are served first.
                    // In a process of its own, which a crash of lpmd does
                    // not end (see fill.rs).
                    let filling = held.take_lazy().map(|lazy| crate::fill::start(&i.spec.name, lazy));
                    let restored = held.release().context("let the restored partition run")?;
                    // Recorded here before the source forgets it: the
                    // partition is listed on one host at every moment.
                    let announce = Plumbing::open(&agent.ctx, &i.spec);
                    agent.adopt(i.spec.clone(), plumbing, restored.root_pid, filling)?;
                    tracing::info!(partition = %i.spec.name, from = peer, pid = restored.root_pid, "partition arrived");
                    api::send(&mut w, &Mover::Running)?;
                    w.flush().context("answer the source")?;
                    fault::point("target.running")?;
                    // After the answer: the announcement repeats over a few
                    // hundred milliseconds and the partition already runs.
                    if let Err(e) = announce.map_err(anyhow::Error::from).and_then(|p| Ok(p.announce()?)) {
                        tracing::warn!(partition = %i.spec.name, error = format!("{e:#}"), "gratuitous ARP");
                    }
                }
                Mover::Report(rep) => {
                    agent.keep_report(&rep);
                    return Ok(());
                }
                Mover::Attach { id } if inc.is_none() => {
                    let store = agent.incoming.lock().unwrap_or_else(|e| e.into_inner()).get(&id).cloned();
                    let store = store.ok_or_else(|| anyhow!("a page stream for {id:?}, which is no incoming migration here"))?;
                    return page_stream(&mut r, &mut w, &store);
                }
                Mover::RoundEnd { round } => {
                    // Every page before it is stored, and the partition's
                    // plumbing is ready before the source may stop it.
                    if let Some(i) = inc.as_mut() {
                        i.ready()?;
                    }
                    api::send(&mut w, &Mover::RoundDone { round })?;
                }
                Mover::Abort(why) => {
                    tracing::info!(from = peer, why, "the source gave up");
                    return Ok(());
                }
                other => bail!("unexpected {other:?}"),
            }
            w.flush().context("answer the source")?;
        }
    })();
    if let Err(e) = &res {
        let _ = api::send(&mut w, &Mover::Failed(format!("{e:#}")));
        let _ = w.flush();
    }
    drop(inc);
    res
}

/// An extra page stream of an incoming migration: pages into the shared
/// store, and an answer at the end of each round once they are in.
fn page_stream(r: &mut BufReader<TcpStream>, w: &mut BufWriter<TcpStream>, store: &Mutex<Store>) -> Result<()> {
    let mut frames = lpm_wire::FrameReader::new();
    loop {
        let (kind, payload) = match frames.read(r) {
            Ok(f) => f,
            // The source closes its streams when the migration ends.
            Err(lpm_wire::WireError::Io { .. }) => return Ok(()),
            Err(e) => return Err(e).context("receive on a page stream"),
        };
        match kind {
            FrameType::Pages => {
                fault::point("target.pages")?;
                let (h, data) = PagesHeader::decode(payload).ok_or_else(|| anyhow!("malformed pages frame"))?;
                let file = store.lock().unwrap_or_else(|e| e.into_inner()).file(h.pid as i32).context("store pages")?;
                file.write(h.vaddr, data).context("store pages")?;
            }
            FrameType::Control => match api::decode::<Mover>(payload, "mover message")? {
                Mover::RoundEnd { round } => {
                    api::send(w, &Mover::RoundDone { round })?;
                }
                other => bail!("unexpected {other:?} on a page stream"),
            },
            other => bail!("unexpected {other:?} frame on a page stream"),
        }
    }
}
