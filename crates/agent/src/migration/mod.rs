//! The two ends of a live migration (DESIGN.md, "Active migration, phase
//! by phase"), hosting the protocol's state machines
//! (lpm_migrate::handover): the source validates, prepares the target,
//! pre-copies memory while the partition runs, freezes it, sends the rest
//! and hands it over; the target restores it, parks it (complete, frozen,
//! outliving lpmd) and runs it on go.
//!
//! The agent decides nothing of the protocol itself: every input goes
//! through the side's machine, whose actions it carries out in order,
//! the first always the record (journal) of the new state. A migration's
//! inputs come from the thread that drives it, from the connection it came
//! on, from its resolver (a thread that asks the peer while the outcome
//! needs it) and from a restarted lpmd; each takes the migration's lock
//! for its transition and all of its actions, as the model check assumes.
//!
//! - [`source`] drives an outgoing migration (`lpm migrate`);
//! - [`target`] serves an incoming one;
//! - this module: the mover connections, the table of migrations, the
//!   resolvers, the recovery at startup and the control requests
//!   (list, show, stop, and the relay of `lpm migration recover`).

mod link;
mod source;
mod target;

use std::io::{BufReader, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use lpm_migrate::handover::{Action, PeerState, SourceInput, TargetInput, TargetState};
use lpm_migrate::journal::{Journal, Record, Side};
use lpm_wire::FrameType;

use crate::api::{self, MigrationInfo, Mover, Response};
use crate::state::{lock, Agent, Underway};

pub use link::Trust;
pub(crate) use link::{accept, Rx, Tx};
pub use source::source;

/// How long a mover waits for its peer before it counts it as lost
/// (`LPM_MOVER_TIMEOUT_MS`, 30 s by default). Before the decision that
/// rolls the migration back; after it, the side keeps its copy and asks.
pub fn mover_timeout() -> Duration {
    let ms = std::env::var("LPM_MOVER_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(30_000);
    Duration::from_millis(ms)
}

/// After the target recorded its copy complete, how long either side
/// waits for the next word on the migration's connection before it also
/// asks its peer through a resolver: a lost "go" or "running" then costs
/// this, not a whole mover timeout, of the partition's time frozen.
/// The name of the Blob frame carrying a provisional description of the
/// tree (lpm_engine::ahead), from which the target spawns it ahead of the
/// stop; a target that does not know it stores it as an image file, which
/// no restore reads.
pub(crate) const PROVISIONAL_BLOB: &str = "ahead.tree";

pub(crate) const ASK_AFTER: Duration = Duration::from_millis(500);

/// A mover connection, after the handshake.
pub(crate) struct Link {
    pub(crate) r: BufReader<Rx>,
    pub(crate) w: Tx,
}

impl Link {
    /// Connects to host `peer`'s mover at `addr` (mutual TLS, or the
    /// cluster key's challenge on an insecure host).
    pub(crate) fn open(agent: &Agent, addr: &str, peer: &str) -> Result<Link> {
        let (r, w) = link::open(agent, addr, peer, 1 << 20)?;
        Ok(Link { r: BufReader::new(r), w })
    }

    /// A connection accepted on the mover port (handshake done).
    pub(crate) fn accepted(r: Rx, w: Tx) -> Link {
        // Small: a frame's payload larger than what is buffered is read
        // straight into the frame reader's buffer, and what was buffered
        // is copied once more.
        Link { r: BufReader::with_capacity(64 << 10, r), w }
    }

    /// Sends one message, flushed.
    pub(crate) fn send(&mut self, m: &Mover) -> Result<()> {
        api::send(&mut self.w, m).context("send to the peer")
    }

    /// Receives one message.
    pub(crate) fn recv(&mut self) -> Result<Mover> {
        api::recv(&mut self.r, "mover message").context("receive from the peer")
    }

    /// Waits at most `t` for each later message.
    pub(crate) fn set_read_timeout(&self, t: Duration) {
        let _ = self.r.get_ref().socket().set_read_timeout(Some(t));
    }

    /// Bounds each later write by `t` (a farewell to a peer that may be
    /// gone must not wait a whole mover timeout).
    pub(crate) fn set_write_timeout(&self, t: Duration) {
        let _ = self.w.socket().set_write_timeout(Some(t));
    }
}

/// Runs `f` while a thread sends [`Mover::Alive`] on `link` every third
/// of the mover timeout: a step of the stop that sends nothing for long
/// must not look like a lost source to the target (the dump of a
/// partition holding a 104 MiB unlinked file took more than the test
/// labs' 10 s under load, and the target gave the migration up).
pub(crate) fn with_keepalive<T>(link: &mut Link, f: impl FnOnce() -> T) -> T {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        let w = &mut link.w;
        s.spawn(move || {
            let every = mover_timeout() / 3;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(every) {
                // A broken link is the next send's to report.
                if api::send(w, &Mover::Alive).is_err() {
                    break;
                }
            }
        });
        let out = f();
        drop(done);
        out
    })
}

/// A migration this host takes part in, not settled yet.
#[derive(Clone)]
pub(crate) enum Live {
    /// This host is its source.
    Source(Arc<source::Live>),
    /// This host is its target.
    Target(Arc<target::Live>),
}

impl Live {
    fn record(&self) -> Record {
        match self {
            Live::Source(s) => s.record(),
            Live::Target(t) => t.record(),
        }
    }
}

impl Agent {
    /// The unsettled migration `id`.
    pub(crate) fn live(&self, id: &str) -> Option<Live> {
        let u = lock(&self.migrations).get(id).cloned()?.into_any();
        match u.downcast::<source::Live>() {
            Ok(s) => Some(Live::Source(s)),
            Err(u) => u.downcast::<target::Live>().ok().map(Live::Target),
        }
    }

    /// Takes an unsettled migration into the table.
    pub(crate) fn register(&self, id: &str, m: Arc<dyn Underway>) {
        lock(&self.migrations).insert(id.to_string(), m);
    }

    /// Forgets a settled migration (its record stays in the journal).
    pub(crate) fn settle(&self, id: &str) {
        lock(&self.migrations).remove(id);
    }

    /// Unsettled migrations in which this host is the source (`true`) or
    /// the target.
    pub(crate) fn under_way(&self, as_source: bool) -> usize {
        lock(&self.migrations).values().filter(|l| l.outgoing() == as_source).count()
    }
}

impl Underway for source::Live {
    fn partition(&self) -> &str {
        &self.partition
    }

    fn outgoing(&self) -> bool {
        true
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

impl Underway for target::Live {
    fn partition(&self) -> &str {
        &self.partition
    }

    fn outgoing(&self) -> bool {
        false
    }

    fn into_any(self: Arc<Self>) -> Arc<dyn std::any::Any + Send + Sync> {
        self
    }
}

/// The fault point before an action (`source.record.handing-over`,
/// `target.send.running`, `target.run`, ...).
pub(crate) fn point<S: Copy + std::fmt::Debug>(side: &str, a: &Action<S>, state_name: impl Fn(S) -> &'static str) -> String {
    let kebab = |s: &str| {
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                out.push('-');
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    };
    match a {
        Action::Record(s) => format!("{side}.record.{}", kebab(state_name(*s))),
        Action::Send(m) => {
            let name = match m {
                lpm_migrate::handover::Msg::Decision(lpm_migrate::handover::Decision::Go) => "go".to_string(),
                lpm_migrate::handover::Msg::Decision(lpm_migrate::handover::Decision::Abort) => "abort".to_string(),
                lpm_migrate::handover::Msg::RoundEnd(_) => "round-end".to_string(),
                lpm_migrate::handover::Msg::RoundDone(_) => "round-done".to_string(),
                lpm_migrate::handover::Msg::Validated { .. } => "validated".to_string(),
                lpm_migrate::handover::Msg::Status { .. } => "status".to_string(),
                other => kebab(&format!("{other:?}")),
            };
            format!("{side}.send.{name}")
        }
        other => format!("{side}.{}", kebab(&format!("{other:?}"))),
    }
}

/// What unsettled migrations of this host hold: their partitions and
/// their ids (the startup sweep leaves their pieces and scratch
/// directories to the recovery).
pub fn held(journal: &Journal) -> crate::orphans::Held {
    match journal.all() {
        Ok(all) => {
            let open: Vec<Record> = all.into_iter().filter(|r| !r.settled).collect();
            crate::orphans::Held {
                partitions: open.iter().map(|r| r.partition.clone()).collect(),
                migrations: open.iter().map(|r| r.id.clone()).collect(),
            }
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "read the migration records");
            crate::orphans::Held::default()
        }
    }
}

/// Resumes every unsettled migration from its record (lpmd just started):
/// its machine is put back in the recorded state and told of the restart;
/// what it then does (roll back, run, destroy, ask the peer) is the
/// protocol's.
pub fn recover(agent: &Arc<Agent>) {
    let records = match agent.journal.all() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "read the migration records: none resumed");
            return;
        }
    };
    for r in records.into_iter().filter(|r| !r.settled) {
        tracing::info!(id = %r.id, partition = %r.partition, state = r.side.name(), "resuming a migration from its record");
        match r.side {
            Side::Source(state) => {
                let live = source::Live::resume(agent, r, state);
                live.apply(agent, SourceInput::Restart, None);
            }
            Side::Target(state) => {
                let live = target::Live::resume(agent, r, state);
                live.apply(agent, TargetInput::Restart, None, None);
            }
        }
    }
    match agent.journal.prune(200) {
        Ok(0) => {}
        Ok(n) => tracing::debug!(removed = n, "old migration records pruned"),
        Err(e) => tracing::warn!(error = format!("{e:#}"), "prune the migration records"),
    }
}

/// Serves one connection on the mover port: an incoming migration (it
/// begins with `Validate`), an extra page stream (`Attach`), or a peer's
/// resolver (`Status`, `Decision`) about a migration already under way.
pub(crate) fn serve(agent: &Arc<Agent>, r: Rx, w: Tx, peer: &str) -> Result<()> {
    let mut link = Link::accepted(r, w);
    let mut frames = lpm_wire::FrameReader::new();
    let mut session: Option<target::Session> = None;
    let mut current: Option<Live> = None;
    loop {
        let (kind, payload) = match frames.read(&mut link.r) {
            Ok(f) => f,
            Err(e) => {
                // The peer went, or the link broke: an incoming migration
                // on this connection learns it.
                return match session.as_mut() {
                    Some(s) => {
                        s.lost(agent, &mut link, &format!("{e}"));
                        Err(e).context("receive from the source")
                    }
                    None => match e {
                        lpm_wire::WireError::Io { .. } => Ok(()),
                        e => Err(e).context("receive from the peer"),
                    },
                };
            }
        };
        match kind {
            FrameType::Pages => {
                let s = session.as_mut().ok_or_else(|| anyhow!("pages before prepare"))?;
                if let Err(e) = s.pages(payload) {
                    s.failed(agent, &mut link, &format!("{e:#}"));
                    return Err(e);
                }
                continue;
            }
            FrameType::Blob => {
                let s = session.as_mut().ok_or_else(|| anyhow!("image file before prepare"))?;
                if let Some(desc) = target::provisional(payload) {
                    s.provisional(agent, desc);
                    continue;
                }
                if let Err(e) = s.blob(payload) {
                    s.failed(agent, &mut link, &format!("{e:#}"));
                    return Err(e);
                }
                continue;
            }
            FrameType::Control => {}
            other => bail!("unexpected {other:?} frame"),
        }
        let m: Mover = api::decode(payload, "mover message")?;
        match m {
            Mover::Validate { id, spec, memory_current, cpu, volumes: _, volume_ids, huge_pages } => {
                // A copy that left here a moment ago may still be going.
                agent.await_departure(&spec.name);
                let mut checks = crate::validate::target(agent, &spec, memory_current, &volume_ids, &cpu);
                checks.push(crate::validate::huge_pages(&huge_pages));
                tracing::info!(%id, partition = %spec.name, from = peer, failed = checks.iter().filter(|c| !c.ok).count(), "validated");
                link.send(&Mover::Validated(checks))?;
            }
            Mover::Prepare { id, spec, source_addr, source } => {
                // The source is the host the connection proved (its
                // certificate, or the key's handshake): another host may
                // not start a migration in its name.
                if source != peer {
                    bail!("{peer} prepared a migration as if it were {source}");
                }
                let s = target::Session::prepare(agent, &id, spec, &source, &source_addr, &mut link)?;
                current = Some(Live::Target(s.live.clone()));
                session = Some(s);
            }
            Mover::Attach { id } if session.is_none() && current.is_none() => {
                if let Some(l) = agent.live(&id) {
                    peer_of(&l.record(), peer, "a page stream")?;
                }
                return target::page_stream(agent, &id, &mut link);
            }
            Mover::Report(r) => {
                agent.keep_report(&r);
                return Ok(());
            }
            // Its arrival was the point: the read did not time out.
            Mover::Alive => {}
            m => {
                if let Some(id) = m.id() {
                    if current.as_ref().is_none_or(|l| l.record().id != id) {
                        current = agent.live(id);
                        if current.is_none() {
                            settled_answer(agent, id, &m, &mut link, peer)?;
                            continue;
                        }
                    }
                }
                if let Some(l) = &current {
                    peer_of(&l.record(), peer, &format!("{:?}", m.kind()))?;
                }
                let msg = m.kind().ok_or_else(|| anyhow!("unexpected {m:?}"))?;
                match &current {
                    Some(Live::Target(t)) => {
                        if let (Mover::Restore { external_netns, hot, .. }, Some(s)) = (&m, session.as_mut()) {
                            s.restore_with(*external_netns, hot.clone());
                        }
                        let s = session.as_mut().filter(|s| Arc::ptr_eq(&s.live, t));
                        t.apply(agent, TargetInput::Message(msg), Some(&mut link), s);
                        if let Some(s) = session.as_mut() {
                            s.after_restored(agent, &mut link);
                        }
                    }
                    Some(Live::Source(s)) => s.apply(agent, SourceInput::Message(msg), Some(&mut link)),
                    // A late word about a migration that ended here.
                    None => tracing::debug!(message = ?m, "outside any migration"),
                }
            }
        }
    }
}

/// Answers a peer (or relay) about a migration this host no longer runs:
/// its settled record says how it ended; without one, it is unknown here.
fn settled_answer(agent: &Agent, id: &str, m: &Mover, link: &mut Link, peer: &str) -> Result<()> {
    let state = match agent.journal.read(id) {
        Ok(Some(r)) => match peer_of(&r, peer, &format!("{:?}", m.kind()))?.side {
            Side::Source(state) => PeerState::Source { state },
            Side::Target(state) => PeerState::Target { state },
        },
        _ => PeerState::Unknown,
    };
    let answer = match (m, state) {
        (Mover::Status { reply: false, .. }, _) => return Ok(()),
        (Mover::Decision { .. }, PeerState::Target { state: TargetState::Running }) => Mover::Running,
        (Mover::Decision { .. }, PeerState::Target { state: TargetState::RolledBack }) => Mover::RolledBack { why: "rolled back".into() },
        _ => Mover::Status { id: id.to_string(), state, reply: false },
    };
    link.send(&answer)
}

/// `r`, if `peer` (the host the connection proved) is the other side of
/// migration `r`; else an error naming both. A host that is not part of
/// a migration may neither steer it (a Decision, a Status that moves
/// the state machine, a page stream) nor learn its state: only the two
/// hosts of a migration speak about it.
fn peer_of<'a>(r: &'a Record, peer: &str, what: &str) -> Result<&'a Record> {
    let expected = match r.side {
        Side::Source(_) => &r.target,
        Side::Target(_) => &r.source,
    };
    if expected != peer {
        tracing::warn!(id = %r.id, partition = %r.partition, from = peer, peer = %expected, what, "refused: not the migration's peer");
        bail!("{peer} sent {what} about migration {} of partition {}, whose peer is {expected}: refused", r.id, r.partition);
    }
    Ok(r)
}

/// The recorded state of `r` as a status for its peer.
pub(crate) fn status_of(r: &Record) -> PeerState {
    match r.side {
        Side::Source(state) => PeerState::Source { state },
        Side::Target(state) => PeerState::Target { state },
    }
}

/// Starts asking the peer of migration `id` for its state until the
/// outcome is known (a thread; one per migration at a time). Backs off
/// from 100 ms to 3 s between tries: a peer that is down, or a network cut
/// off, may take any time to come back.
pub(crate) fn resolve(agent: &Arc<Agent>, live: Live) {
    let (id, flag) = match &live {
        Live::Source(s) => (s.id.clone(), s.resolving.clone()),
        Live::Target(t) => (t.id.clone(), t.resolving.clone()),
    };
    if flag.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let agent = agent.clone();
    std::thread::spawn(move || {
        let mut wait = Duration::from_millis(100);
        let mut tries = 0u32;
        loop {
            let r = live.record();
            if r.side.is_final() {
                break;
            }
            tries += 1;
            match ask(&agent, &live, &r) {
                Ok(()) => {}
                Err(e) => {
                    if tries == 1 || tries.is_multiple_of(20) {
                        tracing::warn!(%id, tries, error = format!("{e:#}"), "cannot reach the peer yet; the copy stays as it is");
                    }
                }
            }
            if live.record().side.is_final() {
                break;
            }
            std::thread::sleep(wait);
            wait = (wait * 2).min(Duration::from_secs(3));
        }
        flag.store(false, std::sync::atomic::Ordering::SeqCst);
        tracing::info!(%id, tries, "resolved");
    });
}

/// One question to the peer and whatever follows from the answer.
fn ask(agent: &Arc<Agent>, live: &Live, r: &Record) -> Result<()> {
    let peer = if matches!(r.side, Side::Source(_)) { &r.target } else { &r.source };
    let mut link = Link::open(agent, &r.peer, peer)?;
    link.set_read_timeout(Duration::from_secs(5));
    link.send(&Mover::Status { id: r.id.clone(), state: status_of(r), reply: true })?;
    loop {
        let m = match link.recv() {
            Ok(m) => m,
            // The peer said all it had to say.
            Err(_) => return Ok(()),
        };
        let Some(msg) = m.kind() else { continue };
        match live {
            Live::Source(s) => s.apply(agent, SourceInput::Message(msg), Some(&mut link)),
            Live::Target(t) => t.apply(agent, TargetInput::Message(msg), Some(&mut link), None),
        }
        if live.record().side.is_final() {
            return Ok(());
        }
    }
}

/// `lpm migration list`: this host's records (the unsettled ones, or all).
pub fn list(agent: &Arc<Agent>, all: bool) -> Result<Response> {
    let records = agent.journal.all().context("read the migration records")?;
    let out = records.into_iter().filter(|r| all || !r.settled).map(|r| info(agent, r)).collect();
    Ok(Response::Migrations(out))
}

fn info(agent: &Agent, record: Record) -> MigrationInfo {
    let live = match agent.live(&record.id) {
        Some(Live::Source(s)) => s.progress(),
        _ => None,
    };
    let report = agent.report_of(&record.id);
    MigrationInfo { host: agent.opts.host.clone(), record, live, report }
}

/// `lpm migration show ID`.
pub fn show(agent: &Arc<Agent>, id: &str) -> Result<Response> {
    let r = agent.journal.read(id)?.ok_or_else(|| anyhow!("no migration {id} on {}", agent.opts.host))?;
    Ok(Response::Migration(Box::new(info(agent, r))))
}

/// `lpm migration stop ID`, on the source: before go the partition keeps
/// running here and everything the target made goes; after go, too late.
/// Answers once the migration ended (or the stop was refused).
pub fn stop(agent: &Arc<Agent>, id: &str) -> Result<Response> {
    match agent.live(id) {
        Some(Live::Source(s)) => s.stop(agent),
        Some(Live::Target(t)) => {
            let r = t.record();
            bail!("migration {id} is stopped on its source, {}: this host ({}) is its target", r.source, agent.opts.host)
        }
        None => {
            let r = agent.journal.read(id)?.ok_or_else(|| anyhow!("no migration {id} on {}", agent.opts.host))?;
            bail!("migration {id} has ended already: {}", r.side.name())
        }
    }
}

/// `lpm migration recover ID`: takes in the other host's recorded state,
/// brought by a relay, and answers with this host's record after it (and
/// starts asking the peer itself, should it be reachable after all).
pub fn relay(agent: &Arc<Agent>, id: &str, peer: PeerState) -> Result<Response> {
    match agent.live(id) {
        Some(l) => {
            let msg = lpm_migrate::handover::Msg::Status { state: peer, reply: false };
            match &l {
                Live::Source(s) => s.apply(agent, SourceInput::Message(msg), None),
                Live::Target(t) => t.apply(agent, TargetInput::Message(msg), None, None),
            }
            if !l.record().side.is_final() {
                resolve(agent, l);
            }
        }
        None if agent.journal.read(id)?.is_none() => bail!("no migration {id} on {}", agent.opts.host),
        None => {}
    }
    show(agent, id)
}

/// Where a migration's images live while it runs: in memory (tmpfs), both
/// for speed and because the target's page store places each page at its
/// virtual address, an offset ext4 files cannot reach.
pub(crate) fn scratch_dir(agent: &Agent, way: &str, id: &str) -> PathBuf {
    PathBuf::from("/dev/shm").join(format!("{}-{}-{way}-{id}", agent.opts.prefix, agent.opts.host))
}

/// Flushes a link, ignoring a peer that went.
pub(crate) fn flush_quietly(link: &mut Link) {
    let _ = link.w.flush();
}
