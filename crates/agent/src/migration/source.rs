//! The source's side: validate, prepare the target, pre-copy while the
//! partition runs, stop it and send the rest, decide, hand over. The
//! thread of `lpm migrate`'s control connection drives it ([`Run`]); every
//! state change goes through the source's machine ([`Live::apply`]).

use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use lpm_host::hold::{Hold, Toward};
use lpm_host::partition::{PartitionSpec, Plumbing};
use lpm_migrate::handover::{self, Action, Decision, Failure, Msg, Source, SourceAction, SourceInput, SourceState};
use lpm_migrate::journal::{self, Ending, Record, Side};
use lpm_migrate::policy::{self, Measure, StopCost, StopSample};
use lpm_migrate::precopy::{PageSink, Precopy, SinkError};
use lpm_migrate::report::{self, Outcome, Report};
use lpm_wire::{FrameType, PagesHeader};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::{mover_timeout, point, resolve, scratch_dir, status_of, Link, ASK_AFTER};
use crate::api::{self, Check, MigrateRequest, Mover, Progress, Response};
use crate::fault;
use crate::state::{lock, recorded_init, Agent, Entry};

/// Image files travel in chunks of this size.
const CHUNK: usize = 8 << 20;
/// How long a stop lets the partition run, at most, for its passing
/// states to pass (connections to accept, handshakes to finish), before
/// and between its attempts to stop.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How many times a stop that found a passing state lets the partition
/// run a moment and stops it again before the dump refuses the state.
const RESTOPS: u32 = 10;

/// Waits, while the tree rooted at `root` runs, until none of its passing
/// states shows ([`lpm_engine::passing`]) or `limit` is over; what still
/// shows then.
fn wait_passed(root: i32, opts: &lpm_engine::DumpOptions, limit: Duration) -> Vec<lpm_engine::Refusal> {
    let t = Instant::now();
    let mut looks = 0;
    loop {
        // An error (the tree changing under the look) counts as not yet.
        let t_look = Instant::now();
        let now = lpm_engine::passing(root, opts)
            .unwrap_or_else(|e| vec![lpm_engine::Refusal { pid: root, kind: "process tree", what: format!("{e}"), transient: true }]);
        looks += 1;
        tracing::debug!(
            root,
            looks,
            look_ms = t_look.elapsed().as_secs_f64() * 1e3,
            passing = now.len(),
            first = ?now.first().map(|r| format!("{} {}: {}", r.pid, r.kind, r.what)),
            "looked for passing states"
        );
        if now.is_empty() || t.elapsed() >= limit {
            return now;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What the source records beside its state, to resume after a restart.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Detail {
    /// Host pid of the partition's init.
    pid: i32,
    /// What the stop let go of (file locks, FIFO data), while the target
    /// may hold it: a restart cannot give it back (it lived in lpmd's
    /// memory), and says so.
    #[serde(default)]
    handed_off: Vec<String>,
}

/// An outgoing migration, not settled yet.
pub(crate) struct Live {
    /// Its id.
    pub id: String,
    /// The partition.
    pub partition: String,
    turn: Mutex<Turn>,
    /// Signalled at every change of state.
    changed: Condvar,
    progress: Mutex<Progress>,
    /// An operator asked to stop it.
    stop: AtomicBool,
    /// A resolver asks the target.
    pub resolving: Arc<AtomicBool>,
    /// The thread of `lpm migrate` drives it (else it is in doubt, or
    /// resumed after a restart, and only resolvers move it).
    driven: AtomicBool,
}

/// The machine and what its actions need, taken for a transition and all
/// of its actions.
struct Turn {
    machine: Source,
    /// The last state written to the journal.
    durable: Option<SourceState>,
    record: Record,
    detail: Detail,
    /// What the stop let go of for the target; given back on abort.
    handoff: Option<lpm_engine::Handoff>,
    /// The dirty trackers, kept until the handover ends (unregistering
    /// walks every page table).
    pre: Option<Precopy>,
    /// Why it rolls back, for the abort message and the record.
    ending: Option<Ending>,
    /// The frames sent to the partition since the stop, held until the
    /// outcome says which copy gets them (lpm_host::hold).
    hold: Option<Hold>,
    /// The held frames on their way to the target's copy, let go as soon
    /// as its "running" arrived (before the source records it).
    releasing: Option<std::thread::JoinHandle<()>>,
}

/// What carrying out one action of the source leads to.
type Next = handover::Next<SourceInput>;

impl Live {
    fn new(agent: &Arc<Agent>, record: Record, detail: Detail, durable: Option<SourceState>) -> Arc<Live> {
        let state = match record.side {
            Side::Source(s) => s,
            Side::Target(_) => SourceState::Validating,
        };
        let live = Arc::new(Live {
            id: record.id.clone(),
            partition: record.partition.clone(),
            turn: Mutex::new(Turn {
                machine: if durable.is_some() { Source::at(state) } else { Source::new() },
                durable,
                record,
                detail,
                handoff: None,
                pre: None,
                ending: None,
                hold: None,
                releasing: None,
            }),
            changed: Condvar::new(),
            progress: Mutex::new(Progress::default()),
            stop: AtomicBool::new(false),
            resolving: Arc::new(AtomicBool::new(false)),
            driven: AtomicBool::new(false),
        });
        agent.register(&live.id, live.clone());
        live
    }

    /// The migration as recorded, after a restart of lpmd: the partition
    /// is adopted again (its processes, frozen or not, are the
    /// migration's until it ends).
    pub(crate) fn resume(agent: &Arc<Agent>, record: Record, state: SourceState) -> Arc<Live> {
        let detail: Detail = serde_json::from_value(record.detail.clone()).unwrap_or_default();
        let name = record.partition.clone();
        let present = agent.parts().contains_key(&name);
        if !present {
            match Plumbing::open(&agent.ctx, &record.spec) {
                Ok(plumbing) => {
                    let pid = recorded_init(&agent.record_dir(&name)).or((detail.pid > 0).then_some(detail.pid));
                    agent.parts().insert(
                        name.clone(),
                        Entry { spec: record.spec.clone(), plumbing, pid, busy: false, migration: Some(record.id.clone()), filling: None },
                    );
                }
                Err(e) => tracing::warn!(id = %record.id, partition = %name, error = %e, "the partition's plumbing is gone"),
            }
        } else {
            let _ = agent.set_migration(&name, Some(&record.id));
        }
        Live::new(agent, record, detail, Some(state))
    }

    /// Its record as it stands.
    pub(crate) fn record(&self) -> Record {
        lock(&self.turn).record.clone()
    }

    /// Its live figures, while the thread of `lpm migrate` drives it.
    pub(crate) fn progress(&self) -> Option<Progress> {
        self.driven.load(Ordering::SeqCst).then(|| lock(&self.progress).clone())
    }

    fn state(&self) -> SourceState {
        lock(&self.turn).machine.state()
    }

    /// Takes one input (from a peer's message, a resolver, a restart):
    /// the transition and all of its actions, under the migration's lock.
    pub(crate) fn apply(self: &Arc<Self>, agent: &Arc<Agent>, input: SourceInput, link: Option<&mut Link>) {
        self.drive(agent, input, link, None);
    }

    fn drive(self: &Arc<Self>, agent: &Arc<Agent>, input: SourceInput, mut link: Option<&mut Link>, mut run: Option<&mut Run<'_>>) {
        let mut turn = lock(&self.turn);
        let whole = handover::drive(
            &mut *turn,
            |t: &mut Turn| &mut t.machine,
            input,
            |turn, a| match run.as_deref_mut() {
                Some(r) => r.act(agent, self, turn, a),
                None => common(agent, self, turn, a, link.as_deref_mut()),
            },
            |e| tracing::warn!(id = %self.id, error = %e, "refused"),
        );
        if !whole {
            // What is on disk is what a restarted lpmd would find: carry
            // on from there.
            turn.machine = turn.durable.map_or_else(Source::new, Source::at);
        }
        drop(turn);
        self.changed.notify_all();
    }

    /// Waits up to `t` for the migration to end; its state then.
    fn wait_final(&self, t: Duration) -> SourceState {
        let deadline = Instant::now() + t;
        let mut turn = lock(&self.turn);
        while !turn.machine.state().is_final() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            turn = self.changed.wait_timeout(turn, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        turn.machine.state()
    }

    /// `lpm migration stop`: asks the thread that drives the migration to
    /// stop at its next step, and waits for the outcome.
    pub(crate) fn stop(&self, agent: &Arc<Agent>) -> Result<Response> {
        let st = self.state();
        if st.decided() == Some(Decision::Go) {
            bail!("too late to stop migration {}: the decision to go was recorded ({})", self.id, st.name());
        }
        self.stop.store(true, Ordering::SeqCst);
        tracing::info!(id = %self.id, partition = %self.partition, state = st.name(), "stop asked");
        let end = self.wait_final(mover_timeout() * 2);
        let r = agent.journal.read(&self.id)?.ok_or_else(|| anyhow!("no record of migration {}", self.id))?;
        match end {
            SourceState::RolledBack => Ok(Response::Migration(Box::new(crate::api::MigrationInfo {
                host: agent.opts.host.clone(),
                record: r,
                live: None,
                report: agent.report_of(&self.id),
            }))),
            s if s.decided() == Some(Decision::Go) => {
                bail!("too late to stop migration {}: the decision to go came first ({})", self.id, s.name())
            }
            s => bail!("migration {} did not stop yet (state {})", self.id, s.name()),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn set_progress(&self, f: impl FnOnce(&mut Progress)) {
        f(&mut lock(&self.progress));
    }
}

/// Carries out one action that needs no migration thread.
fn common(agent: &Arc<Agent>, live: &Arc<Live>, turn: &mut Turn, a: SourceAction, link: Option<&mut Link>) -> Next {
    let pt = point("source", &a, SourceState::name);
    if let Action::Send(m) = a {
        return send(live, turn, m, &pt, link);
    }
    if let Err(e) = fault::point(&pt) {
        tracing::warn!(id = %live.id, error = format!("{e:#}"), "action failed");
        return if matches!(a, Action::Record(_)) { Next::Halt } else { Next::Then(SourceInput::Fail(Failure::Step)) };
    }
    match a {
        Action::Record(s) => record(agent, live, turn, s),
        Action::Answer => {
            if let Some(l) = link {
                if l.send(&Mover::Status { id: live.id.clone(), state: status_of(&turn.record), reply: false }).is_err() {
                    return Next::Then(SourceInput::Fail(Failure::PeerLost));
                }
            }
            Next::Done
        }
        Action::Resume => {
            resume(agent, live, turn);
            Next::Done
        }
        Action::Destroy => {
            destroy(agent, live, turn);
            Next::Done
        }
        Action::Resolve => {
            resolve(agent, super::Live::Source(live.clone()));
            Next::Done
        }
        Action::Finish => {
            finish(agent, live, turn);
            Next::Done
        }
        Action::Send(_) => unreachable!("sent above"),
        Action::Freeze | Action::Prepare | Action::Restore | Action::Run => {
            tracing::error!(id = %live.id, action = ?a, "an action the source cannot carry out here");
            Next::Then(SourceInput::Fail(Failure::Step))
        }
    }
}

/// Writes the new state; a failure is as if lpmd died before it.
fn record(agent: &Agent, live: &Live, turn: &mut Turn, s: SourceState) -> Next {
    turn.record.enter(Side::Source(s));
    if s == SourceState::RolledBack && turn.record.ending.is_none() {
        turn.record.ending = turn.ending.clone();
    }
    turn.record.detail = serde_json::to_value(&turn.detail).unwrap_or_default();
    if let Err(e) = agent.journal.write(&turn.record) {
        tracing::error!(id = %live.id, state = s.name(), error = format!("{:#}", anyhow::Error::from(e)), "cannot record the migration's state; it stays where its record says");
        return Next::Halt;
    }
    turn.durable = Some(s);
    tracing::info!(id = %live.id, partition = %live.partition, state = s.name(), "migration state");
    live.set_progress(|p| p.phase = phase(s).into());
    Next::Done
}

fn phase(s: SourceState) -> &'static str {
    match s {
        SourceState::Validating => "validate",
        SourceState::Preparing => "prepare",
        SourceState::PreCopy { .. } => "precopy",
        SourceState::Frozen => "switchover",
        SourceState::HandingOver => "handover",
        SourceState::Completed => "done",
        SourceState::RolledBack => "rolled back",
    }
}

/// Sends a decision (the one message the source sends outside its
/// migration thread); a message the test drops is lost like on a network.
fn send(live: &Live, turn: &Turn, m: Msg, pt: &str, link: Option<&mut Link>) -> Next {
    match fault::dropped(pt) {
        Ok(true) => return Next::Done,
        Ok(false) => {}
        Err(_) => return Next::Then(SourceInput::Fail(Failure::PeerLost)),
    }
    let msg = match m {
        Msg::Decision(decision) => Mover::Decision {
            id: live.id.clone(),
            decision,
            why: turn.ending.as_ref().map(|e| format!("{}: {}", e.step, e.cause)).unwrap_or_default(),
        },
        other => {
            tracing::error!(id = %live.id, message = ?other, "a message only the migration's thread sends");
            return Next::Done;
        }
    };
    let Some(l) = link else { return Next::Done };
    if matches!(m, Msg::Decision(Decision::Abort)) {
        // A farewell to a peer that may be gone: the partition waits on it.
        l.set_write_timeout(Duration::from_millis(500));
    }
    match l.send(&msg) {
        Ok(()) => Next::Done,
        Err(e) => {
            tracing::warn!(id = %live.id, error = format!("{e:#}"), "send {m:?}");
            Next::Then(SourceInput::Fail(Failure::PeerLost))
        }
    }
}

/// The partition runs here again: what the stop let go of comes back
/// before any thread runs, then the tree thaws, its network unlocks and
/// its CPU is its own again.
fn resume(agent: &Agent, live: &Live, turn: &mut Turn) {
    let spec = turn.record.spec.clone();
    let pid = turn.detail.pid;
    match turn.handoff.take() {
        Some(h) => {
            if let Err(e) = lpm_engine::thaw_tree(pid, h, mover_timeout()) {
                let error = format!("{:#}", anyhow::Error::from(e));
                tracing::error!(id = %live.id, partition = %spec.name, pid, error, "rollback: the partition did not get back all it held");
            }
        }
        None if !turn.detail.handed_off.is_empty() => tracing::error!(
            id = %live.id,
            partition = %spec.name,
            lost = ?turn.detail.handed_off,
            "rollback after a restart: what the stop let go of lived in the lpmd that died; the partition runs without it"
        ),
        None => {}
    }
    turn.detail.handed_off.clear();
    match Plumbing::open(&agent.ctx, &spec) {
        Ok(p) => {
            if let Err(e) = p.cgroup().thaw(Duration::from_secs(5)) {
                tracing::error!(id = %live.id, partition = %spec.name, error = %e, "rollback: thaw");
            }
            if let Err(e) = p.unlock_network() {
                tracing::error!(id = %live.id, partition = %spec.name, error = %e, "rollback: unlock the network");
            }
            // Held back since the drain before the stop (also after a
            // restart: the rules outlive the lpmd that set them).
            if let Err(e) = p.admit_new_connections() {
                tracing::error!(id = %live.id, partition = %spec.name, error = %e, "rollback: admit new connections");
            }
            // What was sent to it while it was stopped reaches it now, its
            // veth back on the bridge and connection requests admitted.
            if let Some(h) = turn.hold.take() {
                release(live, &spec.name, h, Toward::Partition);
            }
            if let Err(e) = p.remove_hold() {
                tracing::warn!(id = %live.id, partition = %spec.name, error = format!("{:#}", anyhow::Error::from(e)), "rollback: remove the hold port");
            }
            if let Err(e) = p.cgroup().set_cpus(spec.cpus) {
                tracing::warn!(id = %live.id, partition = %spec.name, error = %e, "rollback: lift the throttle");
            }
        }
        Err(e) => tracing::error!(id = %live.id, partition = %spec.name, error = %e, "rollback: the partition's plumbing"),
    }
    // Unregistering the trackers walks the page tables; the partition
    // runs meanwhile.
    turn.pre = None;
    let _ = agent.set_migration(&spec.name, None);
}

/// The target's copy runs: the frozen copy here is killed, its init
/// reaped, its namespaces and cgroup removed, on a thread of its own (tens
/// of milliseconds the report need not wait for). The record is settled
/// only once that is done, so a crash meanwhile destroys it again.
fn destroy(agent: &Arc<Agent>, live: &Arc<Live>, turn: &mut Turn) {
    let pre = turn.pre.take();
    turn.handoff = None;
    let hold = turn.hold.take();
    let releasing = turn.releasing.take();
    let (agent2, live2, spec, pid) = (agent.clone(), live.clone(), turn.record.spec.clone(), turn.detail.pid);
    agent.depart(&spec.name.clone(), move || {
        // The target's copy runs and has announced itself: what was sent
        // to the partition since the stop goes there first (and is gone
        // from the hold port before the plumbing goes).
        if let Some(h) = hold {
            release(&live2, &spec.name, h, Toward::Network);
        }
        if let Some(r) = releasing {
            let _ = r.join();
        }
        let t = Instant::now();
        match Plumbing::open(&agent2.ctx, &spec) {
            Ok(plumbing) => {
                let cg = plumbing.cgroup();
                let _ = cg.kill();
                let _ = cg.thaw(Duration::from_secs(2));
                let _ = cg.wait_empty(Duration::from_secs(5));
                if pid > 0 {
                    let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
                }
                if let Err(e) = plumbing.destroy() {
                    tracing::warn!(partition = %spec.name, error = %e, "remove the copy that left");
                }
            }
            Err(e) => tracing::warn!(partition = %spec.name, error = %e, "open the plumbing of the copy that left"),
        }
        // The trackers go last: their areas went with the copy.
        drop(pre);
        // Only this host's record goes: the console log on shared storage
        // moved with the partition.
        agent2.forget(&spec.name);
        let mut turn = lock(&live2.turn);
        turn.record.settled = true;
        if let Err(e) = agent2.journal.write(&turn.record) {
            tracing::warn!(id = %live2.id, error = format!("{:#}", anyhow::Error::from(e)), "settle the record");
        }
        drop(turn);
        agent2.settle(&live2.id);
        tracing::debug!(partition = %spec.name, ms = t.elapsed().as_secs_f64() * 1e3, "source copy removed");
    });
}

/// Lets the held frames go toward the copy that runs, and says how many.
fn release(live: &Live, partition: &str, hold: Hold, toward: Toward) {
    match hold.release(toward) {
        Ok(r) => tracing::info!(
            id = %live.id,
            partition,
            toward = ?toward,
            frames = r.frames,
            bytes = r.bytes,
            lost = r.lost,
            "held frames released"
        ),
        Err(e) => {
            tracing::error!(id = %live.id, partition, toward = ?toward, error = format!("{:#}", anyhow::Error::from(e)), "release the held frames")
        }
    }
}

/// The migration ended here; a rollback is settled at once (a completion
/// once its copy is gone, see [`destroy`]), and a report kept while it was
/// in doubt gets its outcome.
fn finish(agent: &Arc<Agent>, live: &Live, turn: &mut Turn) {
    let st = turn.machine.state();
    if let Some(mut r) = agent.report_of(&live.id).filter(|r| matches!(r.outcome, Outcome::InDoubt { .. })) {
        r.outcome = match (st, &turn.record.ending) {
            (SourceState::Completed, _) => Outcome::Completed,
            (_, Some(e)) => Outcome::Failed { error: e.cause.clone(), step: e.step.clone() },
            _ => Outcome::Failed { error: "the target's copy was gone before it ran".into(), step: "handover".into() },
        };
        agent.keep_report(&r);
    }
    if st == SourceState::RolledBack {
        turn.record.settled = true;
        if let Err(e) = agent.journal.write(&turn.record) {
            tracing::warn!(id = %live.id, error = format!("{:#}", anyhow::Error::from(e)), "settle the record");
        }
        agent.settle(&live.id);
    }
}

/// Pages to the target, as Pages frames on one stream.
struct WireSink<'a> {
    w: &'a mut super::Tx,
    compress: Option<i32>,
    wire_bytes: u64,
    /// A failure test may corrupt frames: each is built whole first.
    faults: bool,
    frame: Vec<u8>,
    /// An operator asked to stop: the round ends at the next frame.
    stop: &'a AtomicBool,
}

impl PageSink for WireSink<'_> {
    fn pages(&mut self, pid: i32, vaddr: u64, data: &[u8]) -> std::result::Result<(), SinkError> {
        if self.stop.load(Ordering::Relaxed) {
            return Err("stopped by request".into());
        }
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
            std::io::Write::write_all(w, &self.frame)
                .map_err(|e| -> SinkError { format!("send pages of pid {pid} at {vaddr:#x}: {e}").into() })?;
            self.wire_bytes += self.frame.len() as u64;
        }
        Ok(())
    }
}

/// Tells the CLI how it goes (best effort: a gone CLI does not stop the
/// migration; `lpm migration show` finds it).
fn progress(ctl: &mut crate::api::ProgressSink, live: &Live, p: Progress) {
    let p = Progress { id: live.id.clone(), ..p };
    live.set_progress(|q| *q = p.clone());
    ctl(p);
}

/// Each volume's identity, its marker written (lpm_host::volume); a
/// volume that cannot be identified is left out, which the target refuses
/// by name.
fn volume_ids(spec: &PartitionSpec) -> Vec<lpm_host::volume::VolumeId> {
    spec.volumes
        .iter()
        .filter_map(|v| {
            lpm_host::volume::identify(v, &spec.name)
                .map_err(|e| tracing::warn!(partition = %spec.name, error = %e, "volume not identified"))
                .ok()
        })
        .collect()
}

/// The source side, run for `lpm migrate` on the control connection.
pub fn source(agent: &Arc<Agent>, req: MigrateRequest, ctl: &mut crate::api::ProgressSink) -> Result<Response> {
    let name = req.name.clone();
    let (spec, pid) = {
        let parts = agent.parts();
        let e = parts.get(&name).ok_or_else(|| anyhow!("no partition {name:?} on {}", agent.opts.host))?;
        let pid = e.pid.ok_or_else(|| anyhow!("partition {name} is not running (start it, or move it while stopped)"))?;
        if let Some(id) = &e.migration {
            bail!("partition {name} is being migrated already (migration {id})");
        }
        (e.spec.clone(), pid)
    };
    let plumbing = Plumbing::open(&agent.ctx, &spec)?;
    // What only this side can check, before the target is asked.
    let mut checks = crate::validate::source(agent, &req, pid);
    let bad_args = checks.iter().find(|c| c.name == "arguments" && !c.ok).map(|c| c.detail.clone());
    if let Some(why) = bad_args {
        bail!("refused arguments: {why}");
    }
    if req.validate_only {
        checks.extend(ask_validation(agent, &req, &spec, &plumbing, pid, "validation only")?);
        return Ok(Response::Validation(checks));
    }
    let failed: Vec<String> = checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)).collect();
    if !failed.is_empty() {
        bail!("validation failed: {}", failed.join("; "));
    }
    let mut id = journal::new_id();
    while agent.journal.read(&id)?.is_some() {
        id = journal::new_id();
    }
    agent.set_migration(&name, Some(&id))?;
    let record = Record::new(&id, &spec, &agent.opts.host, &req.target, &req.target_addr, Side::Source(SourceState::Validating));
    let live = Live::new(agent, record, Detail { pid, handed_off: Vec::new() }, None);
    let mut run = Run::new(agent, &req, spec, pid, plumbing, checks);
    live.driven.store(true, Ordering::SeqCst);
    let res = run.go(&live, ctl);
    live.driven.store(false, Ordering::SeqCst);
    let report = run.report(&live, &res);
    agent.keep_report(&report);
    if let Some(link) = run.link.as_mut() {
        if live.state().is_final() {
            let _ = link.send(&Mover::Report(Box::new(report.clone())));
        }
        super::flush_quietly(link);
    }
    if lock(&live.turn).durable.is_none() {
        // Never recorded (the journal refused): nothing to resume.
        let _ = agent.set_migration(&name, None);
        agent.settle(&id);
    }
    match (live.state(), res) {
        (SourceState::Completed, _) => Ok(Response::Report(Box::new(report))),
        (SourceState::HandingOver, _) => bail!(
            "migration {id} of {name} is in doubt: go was recorded and sent, and {} has not confirmed that its copy runs; the copy here stays frozen while lpmd keeps asking (`lpm migration show {id}`, `lpm migration recover {id}`)",
            req.target
        ),
        (_, Err(e)) => Err(e.context(format!("migration {id}: migrate {name} to {}", req.target))),
        (s, Ok(())) => bail!("migration {id}: migrate {name} to {}: ended {}", req.target, s.name()),
    }
}

/// Asks the target's checks (for `--validate-only`, which makes no
/// record): connect, validate, and leave.
fn ask_validation(
    agent: &Agent,
    req: &MigrateRequest,
    spec: &PartitionSpec,
    plumbing: &Plumbing,
    pid: i32,
    id: &str,
) -> Result<Vec<Check>> {
    let mut link =
        Link::open(agent, &req.target_addr, &req.target).with_context(|| format!("connect to {} at {}", req.target, req.target_addr))?;
    link.send(&validate_message(id, spec, plumbing, pid))?;
    match link.recv()? {
        Mover::Validated(c) => Ok(c),
        other => bail!("the target answered validation with {other:?}"),
    }
}

fn validate_message(id: &str, spec: &PartitionSpec, plumbing: &Plumbing, pid: i32) -> Mover {
    // The huge pages its hugetlbfs areas reserve; one unreadable is the
    // source's "state" check's to report, and none are asked for.
    let huge_pages = lpm_engine::hugetlb::needed_live(pid).map(|m| m.into_iter().collect()).unwrap_or_else(|e| {
        tracing::warn!(pid, error = %e, "huge pages of the partition unreadable");
        Vec::new()
    });
    Mover::Validate {
        id: id.to_string(),
        spec: spec.clone(),
        memory_current: plumbing.cgroup().memory_current().unwrap_or(0),
        // The partition may use anything this CPU offers.
        cpu: prost::Message::encode_to_vec(&lpm_engine::cpu::this_host()),
        volumes: spec.volumes.iter().map(|v| (v.display().to_string(), 0, 0)).collect(),
        volume_ids: volume_ids(spec),
        huge_pages,
    }
}

/// What the source's migration thread knows as the migration runs.
struct Run<'a> {
    agent: &'a Arc<Agent>,
    req: &'a MigrateRequest,
    spec: PartitionSpec,
    pid: i32,
    plumbing: Plumbing,
    /// The source's own checks, joined by the target's.
    checks: Vec<Check>,
    link: Option<Link>,
    /// Extra page streams (`--streams N`: N-1 of them).
    extras: Vec<Link>,
    started: Instant,
    started_ms: u64,
    rounds: Vec<report::Round>,
    throttle_max: f64,
    step: &'static str,
    stop: report::StopBreakdown,
    downtime: Option<Duration>,
    t_stop: Option<Instant>,
    /// When the target's "running" arrived, in answer to go.
    ran_at: Option<Instant>,
    /// From the start to the first round.
    setup: Option<Duration>,
    wire_bytes: u64,
    /// Carried from the policy to the stop.
    smaps_hint: HashMap<i32, Vec<lpm_engine::proc::MapEntry>>,
    /// The frames of the pages the partition's processes share since a
    /// fork, read with `smaps_hint`: the stop's dump reads them once more
    /// instead of twice when they did not change.
    shared_hint: lpm_engine::SharedPages,
    /// The stop's image directory.
    scratch: Option<PathBuf>,
    /// Provisional descriptions of the tree sent (restore ahead), and the
    /// checksum of the last one.
    provisionals: u32,
    provisional_sum: u64,
}

impl<'a> Run<'a> {
    fn new(
        agent: &'a Arc<Agent>,
        req: &'a MigrateRequest,
        spec: PartitionSpec,
        pid: i32,
        plumbing: Plumbing,
        checks: Vec<Check>,
    ) -> Run<'a> {
        Run {
            agent,
            req,
            spec,
            pid,
            plumbing,
            checks,
            link: None,
            extras: Vec::new(),
            started: Instant::now(),
            started_ms: journal::unix_ms(),
            rounds: Vec::new(),
            throttle_max: 0.0,
            step: "connect",
            stop: report::StopBreakdown::default(),
            downtime: None,
            t_stop: None,
            ran_at: None,
            setup: None,
            wire_bytes: 0,
            smaps_hint: HashMap::new(),
            shared_hint: Default::default(),
            scratch: None,
            provisionals: 0,
            provisional_sum: 0,
        }
    }

    fn link(&mut self) -> Result<&mut Link> {
        self.link.as_mut().ok_or_else(|| anyhow!("not connected to the target"))
    }

    /// Feeds the machine an input from this thread.
    fn input(&mut self, live: &Arc<Live>, i: SourceInput) {
        let agent = self.agent;
        live.drive(agent, i, None, Some(self));
    }

    /// Records why the migration fails and tells the machine.
    fn fail(&mut self, live: &Arc<Live>, kind: Failure, e: &anyhow::Error) {
        tracing::warn!(id = %live.id, step = self.step, error = format!("{e:#}"), "migration step failed");
        {
            let mut turn = lock(&live.turn);
            if turn.ending.is_none() {
                turn.ending = Some(Ending { step: self.step.into(), cause: format!("{e:#}") });
            }
        }
        self.input(live, SourceInput::Fail(kind));
    }

    /// Runs the migration to its end, or to doubt.
    fn go(&mut self, live: &Arc<Live>, ctl: &mut crate::api::ProgressSink) -> Result<()> {
        let res = self.phases(live, ctl).map_err(|e| self.why_broken(e));
        if let Err(e) = &res {
            let kind = if live.stopped() {
                Failure::Stopped
            } else if is_peer_gone(e) {
                Failure::PeerLost
            } else {
                Failure::Step
            };
            self.fail(live, kind, e);
        }
        if let Some(dir) = self.scratch.take() {
            let _ = fs::remove_dir_all(dir);
        }
        res
    }

    /// A target that fails while we only send (pre-copy, image files)
    /// says why in a `RolledBack` message and closes; here that shows as a
    /// reset connection. Its reason, already in our receive queue (it left
    /// before the reset), is the cause to report: a refused checksum, a
    /// full disk. Looked for without waiting, so a healthy target that
    /// said nothing costs no time (the partition may be frozen).
    fn why_broken(&mut self, e: anyhow::Error) -> anyhow::Error {
        if !is_peer_gone(&e) {
            return e;
        }
        let Some(link) = self.link.as_mut() else { return e };
        if link.r.get_ref().socket().set_nonblocking(true).is_err() {
            return e;
        }
        let mut why = None;
        // Frames still queued (none are expected) come before the last word.
        for _ in 0..16 {
            match api::recv::<_, Mover>(&mut link.r, "mover message") {
                Ok(Mover::RolledBack { why: w }) => {
                    why = Some(w);
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
        let _ = link.r.get_ref().socket().set_nonblocking(false);
        match why {
            Some(w) => e.context(format!("the target gave up: {w}")),
            None => e,
        }
    }

    /// The target's record says its copy runs: the frames held since the
    /// stop go to it now, on a thread, before this side records the end
    /// (their senders wait for nothing else); the frozen copy here goes
    /// after the record, as ever.
    fn running(&mut self, live: &Arc<Live>) {
        self.ran_at = Some(Instant::now());
        let mut turn = lock(&live.turn);
        if turn.machine.state() != SourceState::HandingOver {
            return;
        }
        if let Some(h) = turn.hold.take() {
            tracing::info!(partition = %self.spec.name, "the target's copy runs: the held frames go to it");
            let (live2, name) = (live.clone(), self.spec.name.clone());
            turn.releasing = Some(std::thread::spawn(move || release(&live2, &name, h, Toward::Network)));
        }
    }

    fn check_stop(&self, live: &Live) -> Result<()> {
        if live.stopped() {
            bail!("stopped by request");
        }
        Ok(())
    }

    fn phases(&mut self, live: &Arc<Live>, ctl: &mut crate::api::ProgressSink) -> Result<()> {
        let name = self.spec.name.clone();
        let blank = Progress::default;
        progress(
            ctl,
            live,
            Progress { phase: "validate".into(), note: format!("migration {} to {}", live.id, self.req.target), ..blank() },
        );
        let link = Link::open(self.agent, &self.req.target_addr, &self.req.target)
            .with_context(|| format!("connect to {} at {}", self.req.target, self.req.target_addr))?;
        self.link = Some(link);
        let connected = self.started.elapsed();
        self.step = "validate";
        self.input(live, SourceInput::Begin);
        if lock(&live.turn).durable.is_none() {
            bail!("cannot record the migration");
        }
        let theirs = match self.link()?.recv().map_err(peer_gone)? {
            Mover::Validated(c) => c,
            other => bail!("the target answered validation with {other:?}"),
        };
        self.checks.extend(theirs);
        let failed: Vec<String> = self.checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)).collect();
        if !failed.is_empty() {
            lock(&live.turn).ending = Some(Ending { step: "validate".into(), cause: format!("validation failed: {}", failed.join("; ")) });
            self.input(live, SourceInput::Message(Msg::Validated { ok: false }));
            bail!("validation failed: {}", failed.join("; "));
        }
        let validated = self.started.elapsed();
        self.check_stop(live)?;
        self.step = "prepare";
        progress(ctl, live, Progress { phase: "prepare".into(), note: format!("preparing {name} on {}", self.req.target), ..blank() });
        self.input(live, SourceInput::Message(Msg::Validated { ok: true }));
        match self.link()?.recv().map_err(peer_gone)? {
            Mover::Prepared => self.input(live, SourceInput::Message(Msg::Prepared)),
            Mover::RolledBack { why } => bail!("the target gave up: {why}"),
            other => bail!("the target answered prepare with {other:?}"),
        }
        if live.state() != (SourceState::PreCopy { round: 1 }) {
            bail!("the migration ended in {}", live.state().name());
        }
        for n in 1..self.req.streams.max(1) {
            let mut l =
                Link::open(self.agent, &self.req.target_addr, &self.req.target).with_context(|| format!("open page stream {}", n + 1))?;
            l.send(&Mover::Attach { id: live.id.clone() })?;
            self.extras.push(l);
        }
        self.step = "precopy";
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
        // What the last stops of this partition (or, before its first,
        // from this host) cost besides their pages.
        let cost: StopCost = lock(&self.agent.stop_cost).of(&self.spec.name);
        let limits = policy::Limits {
            max_downtime,
            max_total: Duration::from_secs(self.req.max_total_s),
            force_switch: self.req.force,
            fixed_cost: cost.fixed(max_downtime),
            ..Default::default()
        };
        let base_cpus = self.spec.cpus.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as f64).unwrap_or(1.0));
        let mut m = Measure::default();
        let mut wire_rate = 0.0;
        loop {
            m.round += 1;
            self.check_stop(live)?;
            // A sending thread per stream (see Precopy::round_parallel).
            let mut sinks = self.stream_sinks(&live.stop);
            let mut refs: Vec<&mut (dyn PageSink + Send)> = sinks.iter_mut().map(|s| s as &mut (dyn PageSink + Send)).collect();
            let st = match pre.round_parallel(&mut refs) {
                Ok(st) => st,
                Err(e) => {
                    drop(refs);
                    drop(sinks);
                    self.check_stop(live)?;
                    return Err(peer_gone(anyhow::Error::from(e).context(format!("pre-copy round {}", m.round))));
                }
            };
            drop(refs);
            let wire: u64 = sinks.iter().map(|s| s.wire_bytes).sum();
            drop(sinks);
            let t_barrier = Instant::now();
            self.input(live, SourceInput::RoundSent(m.round));
            // While the target stores what is still in flight, this side
            // collects what the round left dirty and reads the areas'
            // flags a stop would need (both CPU of its own, on a machine
            // where the target's work takes the other CPUs).
            let c = pre.collect().with_context(|| format!("collect dirty pages after round {}", m.round))?;
            let collected = t_barrier.elapsed();
            self.smaps_hint = self.read_smaps_hint();
            self.shared_hint = lpm_engine::read_shared_pages(&self.smaps_hint);
            let hinted = t_barrier.elapsed();
            self.round_done(live, m.round)?;
            let barrier = t_barrier.elapsed();
            self.send_provisional()?;
            fault::point("source.round")?;
            self.wire_bytes += wire;
            let secs = st.duration.as_secs_f64().max(1e-6);
            // Bandwidth from rounds big enough to measure; dirty rate from
            // what the round found written since the previous one.
            if st.bytes >= (1 << 20) || m.bandwidth == 0.0 {
                wire_rate = (st.bytes as f64 / secs).max(1.0);
            }
            // The policy weighs what is left against the stop's own rate.
            m.bandwidth = cost.stop_rate(wire_rate);
            tracing::debug!(
                partition = %name,
                round = m.round,
                collect_ms = collected.as_secs_f64() * 1e3,
                smaps_ms = (hinted - collected).as_secs_f64() * 1e3,
                barrier_ms = barrier.as_secs_f64() * 1e3,
                "round ended"
            );
            m.remaining = c.pending;
            m.untracked = c.untracked;
            m.sent_last = st.pages;
            m.dirty_rate = c.dirty_rate();
            m.elapsed = self.started.elapsed();
            m.history.push(m.remaining);
            self.rounds.push(report::Round::from_stats(&st, wire, m.dirty_rate, m.throttle));
            {
                let mut turn = lock(&live.turn);
                turn.record.figures.round = m.round;
                turn.record.figures.dirty_pages = m.remaining;
                turn.record.figures.sent_bytes = self.wire_bytes;
            }
            progress(
                ctl,
                live,
                Progress {
                    phase: "precopy".into(),
                    round: m.round,
                    dirty_pages: m.remaining,
                    sent_bytes: self.wire_bytes,
                    rate: wire_rate,
                    throttle: m.throttle,
                    ..blank()
                },
            );
            self.check_stop(live)?;
            match policy::decide(&m, &limits) {
                policy::Decision::Continue => self.input(live, SourceInput::NextRound),
                policy::Decision::Throttle(t) => {
                    m.throttle = t;
                    m.rounds_at_throttle = 0;
                    self.throttle_max = self.throttle_max.max(t);
                    self.plumbing.cgroup().set_cpus(Some((base_cpus * (1.0 - t)).max(0.01))).context("throttle the partition's CPU")?;
                    self.input(live, SourceInput::NextRound);
                }
                policy::Decision::Switchover => break,
                policy::Decision::Abort(why) => {
                    lock(&live.turn).ending = Some(Ending { step: "precopy".into(), cause: why.to_string() });
                    bail!("{why}");
                }
            }
            if !matches!(live.state(), SourceState::PreCopy { .. }) {
                bail!("the migration ended in {}", live.state().name());
            }
            m.rounds_at_throttle += 1;
        }
        lock(&live.turn).pre = Some(pre);
        self.step = "switchover";
        progress(ctl, live, Progress { phase: "switchover".into(), note: "freezing".into(), ..blank() });
        self.input(live, SourceInput::Switchover);
        if live.state() != SourceState::Frozen {
            let cause = lock(&live.turn).ending.as_ref().map(|e| e.cause.clone()).unwrap_or_default();
            bail!("the stop failed, the partition runs on here: {cause}");
        }
        // The target restores; then the decision.
        self.step = "restore";
        let t = Instant::now();
        match self.link()?.recv().map_err(peer_gone)? {
            Mover::Restored { restore_ms, verify_ms } => {
                self.stop.restore_ms = restore_ms;
                self.stop.verify_ms = verify_ms;
                self.check_stop(live)?;
                self.step = "handover";
                self.input(live, SourceInput::Message(Msg::Restored));
            }
            Mover::RolledBack { why } => bail!("the target gave up: {why}"),
            other => bail!("the target answered restore with {other:?}"),
        }
        // Go is recorded and sent: wait for the target's word that its
        // copy runs. A slow answer also starts the resolver, which asks on
        // a connection of its own.
        if live.state() == SourceState::HandingOver {
            self.link()?.set_read_timeout(ASK_AFTER);
            let deadline = Instant::now() + mover_timeout();
            while live.state() == SourceState::HandingOver && Instant::now() < deadline {
                match self.link()?.recv() {
                    Ok(m) => match m.kind() {
                        Some(msg) => {
                            if msg == Msg::Running {
                                self.running(live);
                            }
                            self.input(live, SourceInput::Message(msg))
                        }
                        None => tracing::warn!(?m, "unexpected answer to go"),
                    },
                    Err(e) => {
                        tracing::info!(id = %live.id, error = format!("{e:#}"), "no answer to go yet: asking the target");
                        self.input(live, SourceInput::Fail(Failure::PeerLost));
                        live.wait_final(deadline.saturating_duration_since(Instant::now()));
                        break;
                    }
                }
            }
        }
        // The stop ends when the target's word that its copy runs arrives
        // (its frames let go then): recording it here and removing the
        // frozen copy are no part of it.
        let end = self.ran_at.unwrap_or_else(Instant::now);
        self.stop.handover_ms = (end - t).as_secs_f64() * 1e3 - self.stop.restore_ms;
        if let Some(ts) = self.t_stop {
            self.downtime = Some(end - ts);
        }
        if live.state() == SourceState::Completed {
            self.learn_stop_cost();
            progress(ctl, live, Progress { phase: "done".into(), note: format!("running on {}", self.req.target), ..blank() });
        }
        Ok(())
    }

    /// Carries out one action of the machine on this thread.
    fn act(&mut self, agent: &Arc<Agent>, live: &Arc<Live>, turn: &mut Turn, a: SourceAction) -> Next {
        let pt = point("source", &a, SourceState::name);
        let sent = |r: Result<()>| match r {
            Ok(()) => Next::Done,
            Err(e) => {
                tracing::warn!(id = %live.id, error = format!("{e:#}"), "send to the target");
                Next::Then(SourceInput::Fail(Failure::PeerLost))
            }
        };
        match a {
            Action::Freeze => {
                if let Err(e) = fault::point(&pt) {
                    turn.ending.get_or_insert(Ending { step: "switchover".into(), cause: format!("{e:#}") });
                    return Next::Then(SourceInput::Fail(Failure::Step));
                }
                match self.switchover(live, turn) {
                    Ok(()) => Next::Done,
                    Err(e) => {
                        let kind = if is_peer_gone(&e) { Failure::PeerLost } else { Failure::Step };
                        tracing::warn!(id = %live.id, error = format!("{e:#}"), "the stop failed");
                        turn.ending.get_or_insert(Ending { step: "switchover".into(), cause: format!("{e:#}") });
                        Next::Then(SourceInput::Fail(kind))
                    }
                }
            }
            Action::Send(m @ (Msg::Validate | Msg::Prepare | Msg::RoundEnd(_))) => {
                match fault::dropped(&pt) {
                    Ok(true) => return Next::Done,
                    Ok(false) => {}
                    Err(_) => return Next::Then(SourceInput::Fail(Failure::PeerLost)),
                }
                let id = live.id.clone();
                match m {
                    Msg::Validate => {
                        let msg = validate_message(&id, &self.spec, &self.plumbing, self.pid);
                        sent(self.link().and_then(|l| l.send(&msg)))
                    }
                    Msg::Prepare => {
                        let msg = Mover::Prepare {
                            id,
                            spec: self.spec.clone(),
                            source_addr: agent.opts.listen.to_string(),
                            source: agent.opts.host.clone(),
                        };
                        sent(self.link().and_then(|l| l.send(&msg)))
                    }
                    Msg::RoundEnd(round) => {
                        // Every stream, the first too: what the sockets
                        // still buffer would otherwise be stored during the
                        // stop, ahead of its own pages.
                        let r = self.link().and_then(|l| l.send(&Mover::RoundEnd { round }));
                        let r = r.and_then(|()| self.extras.iter_mut().try_for_each(|l| l.send(&Mover::RoundEnd { round })));
                        sent(r)
                    }
                    _ => unreachable!("matched above"),
                }
            }
            other => common(agent, live, turn, other, self.link.as_mut()),
        }
    }

    /// The areas' flags of every process of the partition, read while it
    /// runs, for the dump of a stop: smaps walks every page table, too
    /// slow for the stop itself. The dump uses a process's entry only if
    /// its areas are still the same then.
    fn read_smaps_hint(&self) -> HashMap<i32, Vec<lpm_engine::proc::MapEntry>> {
        let mut hint = HashMap::new();
        for pid in self.plumbing.cgroup().procs().unwrap_or_default() {
            if let Ok(m) = lpm_engine::proc::smaps(pid) {
                hint.insert(pid, m);
            }
        }
        hint
    }

    /// Sends the target a provisional description of the tree, read from
    /// /proc while it runs (lpm_engine::ahead), when it changed since the
    /// last one sent, at most [`PROVISIONALS`] times: the target spawns
    /// the tree from it ahead of the stop. A tree still changing after
    /// that gets one description without processes, which withdraws the
    /// last (the target drops its tree now, not in the stop). A
    /// description that cannot be read (a process ended meanwhile) waits
    /// for the next round. Only with `LPM_AHEAD=1` in lpmd's environment:
    /// off by default until a migration whose pre-copy runs long with the
    /// tree spawned ahead converges as it does without (the handover
    /// test `cli_killed_mid_migration` does not, with it).
    fn send_provisional(&mut self) -> Result<()> {
        if self.provisionals > PROVISIONALS || std::env::var_os("LPM_AHEAD").is_none_or(|v| v != "1") {
            return Ok(());
        }
        let t = Instant::now();
        let desc = match lpm_engine::ahead::describe(self.pid, self.external_netns(), &self.smaps_hint) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(partition = %self.spec.name, error = %e, "no provisional description this round");
                return Ok(());
            }
        };
        if let Some(why) = lpm_engine::ahead::refusal(&desc) {
            // Not to be spawned ahead (PostgreSQL's shared memory: half a
            // megabyte and 40 to 140 ms a round to describe, for nothing):
            // no more descriptions, and the last one sent, if any, is
            // withdrawn.
            tracing::debug!(partition = %self.spec.name, why, "tree not to be spawned ahead");
            if self.provisionals == 0 {
                self.provisionals = PROVISIONALS + 1;
                return Ok(());
            }
            self.provisionals = PROVISIONALS;
        }
        let bytes = lpm_image::encode_tree(&desc);
        let sum = lpm_image::checksum(&bytes);
        if sum == self.provisional_sum {
            return Ok(());
        }
        let (desc, bytes) = if self.provisionals == PROVISIONALS {
            let none = lpm_image::TreeImage { root_pid: desc.root_pid, ..Default::default() };
            let bytes = lpm_image::encode_tree(&none);
            (none, bytes)
        } else {
            (desc, bytes)
        };
        let head = blob_head(super::PROVISIONAL_BLOB, 0);
        let compress = self.req.compress;
        let link = self.link()?;
        let w = lpm_wire::write_frame_parts(&mut link.w, FrameType::Blob, &[&head, &bytes], compress)
            .context("send the provisional description")
            .map_err(peer_gone)?;
        // On its way now: the target spawns the tree while the next round
        // runs, not when the next message pushes it out.
        std::io::Write::flush(&mut link.w).context("send the provisional description").map_err(peer_gone)?;
        self.wire_bytes += w;
        self.provisionals += 1;
        self.provisional_sum = sum;
        tracing::debug!(
            partition = %self.spec.name,
            processes = desc.processes.len(),
            bytes = bytes.len(),
            ms = t.elapsed().as_secs_f64() * 1e3,
            refused = lpm_engine::ahead::refusal(&desc).unwrap_or_default(),
            "provisional description sent"
        );
        Ok(())
    }

    /// Whether the init still lives in the partition's namespace (the
    /// one with its NIC, which the target brings) or made one of its own.
    fn external_netns(&self) -> bool {
        let ino = |p: &Path| fs::metadata(p).map(|m| m.ino()).ok();
        ino(Path::new(&format!("/proc/{}/ns/net", self.pid))).is_some()
            && ino(Path::new(&format!("/proc/{}/ns/net", self.pid))) == ino(&self.plumbing.netns().path())
    }

    /// The stop (the machine's Freeze): lock the network, stop the tree,
    /// send the last round, dump the rest, send it and ask for the
    /// restore. On error the machine rolls back.
    fn switchover(&mut self, live: &Live, turn: &mut Turn) -> Result<()> {
        let dir = scratch_dir(self.agent, "out", &live.id);
        let _ = fs::remove_dir_all(&dir);
        self.scratch = Some(dir.clone());
        test_gate();
        tracing::debug!(partition = %self.spec.name, since_start_ms = self.started.elapsed().as_secs_f64() * 1e3, "stopping");
        // Whether the init still lives in the partition's namespace (the
        // one with its NIC, which the target brings) or made one of its own.
        let ino = |p: &Path| fs::metadata(p).map(|m| m.ino()).ok();
        let external_netns = ino(Path::new(&format!("/proc/{}/ns/net", self.pid))).is_some()
            && ino(Path::new(&format!("/proc/{}/ns/net", self.pid))) == ino(&self.plumbing.netns().path());
        let check = lpm_engine::DumpOptions { after: lpm_engine::After::Frozen, tcp_established: true, ..Default::default() };
        // Built while the partition runs: the stop only moves its address.
        if turn.hold.is_none() {
            match self.plumbing.hold() {
                Ok(h) => turn.hold = Some(h),
                Err(e) => {
                    tracing::warn!(partition = %self.spec.name, error = format!("{:#}", anyhow::Error::from(e)), "no hold port: packets sent during the stop are dropped")
                }
            }
        }
        // A server's connections still in the handshake (SYN_RECV) have
        // no socket a restore could rebuild, and a locked network would
        // hold them there: first no new ones, then the ones under way
        // finish while the partition runs on.
        // Held by the hold port when there is one (they reach the copy
        // that runs, without a SYN retransmission), dropped in the
        // partition's namespace otherwise.
        let t_drain = Instant::now();
        // Auto-converge's throttle has done its work: what the partition
        // writes from here is the last round's. Throttled (1 % of a CPU at
        // 99), a server accepts the connections the drain waits for once
        // per CFS period (100 ms), and the requests its clients send
        // meanwhile wait as long before the stop even begins (PostgreSQL:
        // 100 to 300 ms more than the downtime). It runs within its own
        // limit until the freeze.
        if self.throttle_max > 0.0 {
            if let Err(e) = self.plumbing.cgroup().set_cpus(self.spec.cpus) {
                tracing::warn!(partition = %self.spec.name, error = %e, "lift the throttle for the drain");
            }
        }
        let held_syns = turn.hold.as_ref().is_some_and(|h| match h.hold_connection_requests() {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(partition = %self.spec.name, error = format!("{:#}", anyhow::Error::from(e)), "connection requests cannot be held: they are dropped");
                false
            }
        });
        if let Err(e) = if held_syns { Ok(()) } else { self.plumbing.refuse_new_connections() } {
            tracing::warn!(partition = %self.spec.name, error = format!("{e:#}"), "new connections cannot be held back: the stop may meet handshakes");
        }
        let left = wait_passed(self.pid, &check, DRAIN_LIMIT);
        // A process that came or went since the last round (a server's
        // worker for a connection that ended in the drain) makes every
        // shared object go again: in a round of its own while the
        // partition runs, rather than inside the stop.
        if let Some(pre) = turn.pre.as_mut().and_then(|p| p.tree_changed().then_some(p)) {
            let t = Instant::now();
            let stop_flag = AtomicBool::new(false);
            let mut sink = self.stream_sinks(&stop_flag).into_iter().next().expect("the main stream");
            let st =
                pre.round(&mut sink).map_err(|e| peer_gone(anyhow::Error::from(e).context("send shared memory again after the drain")))?;
            self.wire_bytes += sink.wire_bytes;
            tracing::debug!(partition = %self.spec.name, pages = st.pages, ms = t.elapsed().as_secs_f64() * 1e3, "a round after the drain");
        }
        self.stop.drain_ms = t_drain.elapsed().as_secs_f64() * 1e3;
        tracing::debug!(partition = %self.spec.name, ms = self.stop.drain_ms, left = left.len(), "drained");
        let t_stop = Instant::now();
        self.t_stop = Some(t_stop);
        // Every frame for the partition is held from here (and its veth
        // leaves the bridge after the last stop below, when it can send
        // nothing more: what it answers meanwhile reaches its peers);
        // without a hold port the veth leaves the bridge now and what is
        // sent to the partition is dropped.
        let held = match turn.hold.as_mut().map(Hold::engage) {
            Some(Ok(())) => true,
            Some(Err(e)) => {
                tracing::warn!(partition = %self.spec.name, error = format!("{:#}", anyhow::Error::from(e)), "frames for the partition cannot be held: they are dropped");
                false
            }
            None => false,
        };
        if !held {
            self.plumbing.lock_network().context("lock the partition's network")?;
        }
        let locked = t_stop.elapsed();
        let mut stopped = self.stop_unthrottled().context("stop the partition")?;
        // What passes by itself (a connection waiting to be accepted, one
        // ended that its program has not closed yet) may be there at the
        // stop: the partition runs a moment more, its network still
        // locked so that nothing new comes in, and is stopped again. The
        // pages it writes meanwhile are tracked as in any round. What is
        // still there after that is refused by the dump, by name.
        loop {
            let now = lpm_engine::passing(self.pid, &check).context("look for passing states at the stop")?;
            if now.is_empty() || self.stop.restops >= RESTOPS {
                break;
            }
            self.stop.restops += 1;
            tracing::info!(
                partition = %self.spec.name,
                restop = self.stop.restops,
                first = %now[0],
                "stopped in a passing state: the partition runs a moment more"
            );
            // Its moment runs within its own CPU limit, not without.
            if self.throttle_max > 0.0 || self.spec.cpus.is_some() {
                if let Err(e) = self.plumbing.cgroup().set_cpus(self.spec.cpus) {
                    tracing::warn!(partition = %self.spec.name, error = %e, "put the partition's CPU limit back for its moment");
                }
            }
            stopped.resume();
            wait_passed(self.pid, &check, DRAIN_LIMIT);
            stopped = self.stop_unthrottled().context("stop the partition again")?;
        }
        if held {
            self.plumbing.lock_network().context("lock the partition's network")?;
        }
        let at_stop = t_stop.elapsed();
        let pre = turn.pre.as_mut().ok_or_else(|| anyhow!("no dirty tracking"))?;
        // Stopped first, then the trackers' last word (nothing runs, so
        // nothing writes behind it) and the pages it names, sent as in every
        // round; the last round is small, the main stream carries it.
        let stop_flag = AtomicBool::new(false);
        let mut sink = self.stream_sinks(&stop_flag).into_iter().next().expect("the main stream");
        let done =
            pre.finish(&mut sink).map_err(|e| peer_gone(anyhow::Error::from(e).context("send the pages written since the last round")))?;
        let (last, held, precopied_shm) = (done.stats, done.held, done.shm);
        let hot = done.last_sent.into_iter().map(|(pid, r)| (pid as u32, r)).collect();
        let wire = sink.wire_bytes;
        drop(sink);
        self.wire_bytes += wire;
        // Every stream's pages are stored before the restore reads them.
        let round = last.round;
        let r = self.link().and_then(|l| l.send(&Mover::RoundEnd { round }));
        r.and_then(|()| self.extras.iter_mut().try_for_each(|l| l.send(&Mover::RoundEnd { round }))).map_err(peer_gone)?;
        self.stream_barrier(round)?;
        let at_collect = t_stop.elapsed();
        let opts = lpm_engine::DumpOptions {
            // The partition's veth is off the bridge: no rules of lpm's.
            lock_connections: false,
            precopied: held,
            precopied_shm,
            external_netns,
            smaps_hint: std::mem::take(&mut self.smaps_hint),
            shared_hint: Some(std::mem::take(&mut self.shared_hint)),
            ..check
        };
        let dump = || stopped.dump(&dir, &opts);
        let dumped = match self.link() {
            Ok(link) => super::with_keepalive(link, dump),
            Err(_) => dump(),
        };
        let mut stats = dumped.context("checkpoint the stopped partition")?;
        let handoff = std::mem::take(&mut stats.handoff);
        turn.detail.handed_off = if handoff.is_empty() { Vec::new() } else { vec![format!("{handoff:?}")] };
        turn.handoff = Some(handoff);
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
        self.stop.stopping_ms = at_stop.as_secs_f64() * 1e3;
        self.stop.last_pages_ms = (at_collect - at_stop).as_secs_f64() * 1e3;
        self.stop.dump_ms = self.stop.freeze_ms - at_collect.as_secs_f64() * 1e3;
        self.stop.final_pages = last.pages + stats.pages;
        let t = Instant::now();
        fault::point("source.frozen")?;
        let (files, bytes) = self.send_images(&dir).map_err(peer_gone)?;
        self.stop.state_image_bytes = bytes;
        let restore = Mover::Restore { files, external_netns, hot };
        match fault::dropped("source.send.restore") {
            Ok(true) => {}
            Ok(false) => self.link()?.send(&restore).map_err(peer_gone)?,
            Err(e) => return Err(peer_gone(e)),
        }
        self.stop.transfer_ms = t.elapsed().as_secs_f64() * 1e3;
        let _ = fs::remove_dir_all(&dir);
        Ok(())
    }

    /// Stops the tree with no CPU limit in its way. A task that a CFS
    /// quota holds off the CPU (auto-converge's throttle, or the
    /// partition's own limit) cannot reach the freezer's trap nor its
    /// ptrace stop until the next period gives it time: at 99 % the stop
    /// waited up to a period (100 ms) for each. The freeze is asked first,
    /// so from then on no task runs its own code again, and only then is
    /// the limit lifted: the tasks run straight into their traps, with no
    /// burst of the program between. The rollback puts the partition's
    /// own limit back ([`resume`]); a completed move removes this copy.
    /// A partition without a limit is stopped as it always was.
    fn stop_unthrottled(&self) -> Result<lpm_engine::StoppedTree> {
        // Auto-converge only ever raises the throttle: throttled now if
        // ever in this migration.
        if self.throttle_max <= 0.0 && self.spec.cpus.is_none() {
            return Ok(lpm_engine::stop_tree(self.pid)?);
        }
        let cg = self.plumbing.cgroup();
        cg.begin_freeze().context("ask the cgroup freezer")?;
        cg.set_cpus(None).context("lift the partition's CPU limit for the stop")?;
        let stopped = lpm_engine::stop_tree(self.pid)?;
        if stopped.cgroup().is_none() {
            // Stopped thread by thread (the tree is not alone in its
            // cgroup): every thread sits in its ptrace stop, the freezer
            // asked above is no longer needed.
            cg.thaw(Duration::from_secs(5)).context("thaw the cgroup after the stop")?;
        }
        Ok(stopped)
    }

    /// The downtime budget and whether this stop kept it.
    fn budget(&self) -> Option<report::Budget> {
        let down = self.downtime?;
        Some(report::Budget::of(self.req.max_downtime_ms as f64, down.as_secs_f64() * 1e3, &self.stop))
    }

    /// Updates the host's and the partition's models of a stop from this
    /// one; an overrun, with the phase that took the most of it.
    fn learn_stop_cost(&self) {
        let (Some(down), Some(budget)) = (self.downtime, self.budget()) else { return };
        let sample = StopSample {
            downtime_ms: down.as_secs_f64() * 1e3,
            pages: self.stop.final_pages,
            pages_ms: self.stop.last_pages_ms,
            over: budget.cause,
        };
        let mut c = lock(&self.agent.stop_cost);
        c.learn(&self.spec.name, &sample);
        if let Some(cause) = budget.cause {
            tracing::warn!(
                partition = %self.spec.name,
                downtime_ms = sample.downtime_ms,
                max_downtime_ms = budget.max_downtime_ms,
                overrun_ms = budget.overrun_ms,
                %cause,
                cause_ms = budget.cause_ms,
                "the stop went over the downtime budget"
            );
        }
        tracing::debug!(partition = %self.spec.name, model = ?c.of(&self.spec.name), host = ?c.host, "stop cost learned");
    }

    /// A sink per stream, for a sending thread each.
    fn stream_sinks<'s>(&'s mut self, stop: &'s AtomicBool) -> Vec<WireSink<'s>> {
        let (compress, faults) = (self.req.compress, fault::watched("source.pages"));
        let main = self.link.as_mut().map(|l| &mut l.w);
        main.into_iter()
            .chain(self.extras.iter_mut().map(|l| &mut l.w))
            .map(|w| WireSink { w, compress, wire_bytes: 0, faults, frame: Vec::new(), stop })
            .collect()
    }

    /// Every stream's answer that all of round `round` is stored; the
    /// main stream's goes through the machine.
    fn round_done(&mut self, live: &Arc<Live>, round: u32) -> Result<()> {
        match self.link()?.recv().map_err(peer_gone)? {
            Mover::RoundDone { round: r } if r == round => self.input(live, SourceInput::Message(Msg::RoundDone(r))),
            Mover::RolledBack { why } => bail!("the target gave up: {why}"),
            other => bail!("the target answered the end of round {round} with {other:?}"),
        }
        self.extras_done(round)
    }

    /// The stop's last barrier: every stream's pages stored.
    fn stream_barrier(&mut self, round: u32) -> Result<()> {
        match self.link()?.recv().map_err(peer_gone)? {
            Mover::RoundDone { round: r } if r == round => {}
            Mover::RolledBack { why } => bail!("the target gave up: {why}"),
            other => bail!("the target answered the end of round {round} with {other:?}"),
        }
        self.extras_done(round)
    }

    fn extras_done(&mut self, round: u32) -> Result<()> {
        for (n, l) in self.extras.iter_mut().enumerate() {
            match l.recv().map_err(peer_gone).with_context(|| format!("page stream {}", n + 2))? {
                Mover::RoundDone { round: r } if r == round => {}
                other => bail!("page stream {} answered the end of round {round} with {other:?}", n + 2),
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
                let w = lpm_wire::write_frame_parts(&mut self.link()?.w, FrameType::Blob, &[&head, &buf[..n]], compress)
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

    fn report(&self, live: &Live, res: &Result<()>) -> Report {
        let total = self.started.elapsed();
        let turn = lock(&live.turn);
        let ending = turn.ending.clone().or_else(|| turn.record.ending.clone());
        let outcome = match (turn.machine.state(), res) {
            (SourceState::Completed, _) => Outcome::Completed,
            (SourceState::HandingOver, _) => Outcome::InDoubt {
                note: format!("go was recorded and sent; {} has not confirmed its copy runs; the copy here stays frozen", self.req.target),
            },
            (_, Err(e)) if live.stopped() || format!("{e}").contains("did not converge") => Outcome::Aborted {
                reason: ending.as_ref().map(|e| e.cause.clone()).unwrap_or_else(|| format!("{e:#}")),
                step: ending.as_ref().map(|e| e.step.clone()).unwrap_or_else(|| self.step.into()),
            },
            (_, Err(e)) => Outcome::Failed { error: format!("{e:#}"), step: self.step.into() },
            (s, Ok(())) => Outcome::Failed { error: format!("ended {}", s.name()), step: self.step.into() },
        };
        Report {
            id: live.id.clone(),
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
            budget: self.budget(),
        }
    }
}

/// The peer is gone (a connection that broke or timed out): before the
/// decision that is a rollback, after it a question to ask again.
#[derive(Debug)]
struct PeerGone;

impl std::fmt::Display for PeerGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "lost touch with the target")
    }
}

impl std::error::Error for PeerGone {}

fn peer_gone(e: anyhow::Error) -> anyhow::Error {
    e.context(PeerGone)
}

/// Whether the failure is the peer's going (anyhow finds a context
/// anywhere in the chain by its type).
fn is_peer_gone(e: &anyhow::Error) -> bool {
    e.downcast_ref::<PeerGone>().is_some()
}

/// For the tests of restore ahead: with `LPM_TEST_GATE` naming a file,
/// the stop begins only once that file exists (a test changes the
/// partition between the last provisional description and the stop,
/// then opens the gate). Waits two minutes at most.
fn test_gate() {
    let Some(gate) = std::env::var_os("LPM_TEST_GATE") else { return };
    let gate = PathBuf::from(gate);
    tracing::info!(gate = %gate.display(), "the stop waits for the test's gate");
    let t = Instant::now();
    while !gate.exists() && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Provisional descriptions a migration sends at most (then one that
/// withdraws the last, should the tree change again): a tree that keeps
/// changing (a server forking a worker per connection) is spawned ahead a
/// few times, not in every round.
const PROVISIONALS: u32 = 4;

/// A Blob payload: u16 name length, the name, u64 offset, the bytes.
fn blob_head(name: &str, off: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(10 + name.len());
    p.extend_from_slice(&(name.len() as u16).to_le_bytes());
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&off.to_le_bytes());
    p
}
