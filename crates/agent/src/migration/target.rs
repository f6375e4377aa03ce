//! The target's side: prepare the partition's plumbing and a page store,
//! store the rounds' pages, restore the final state and park it
//! (complete, frozen in its cgroup, traced by nobody, its lazy fill in a
//! process of its own: it outlives lpmd), then run it on go or destroy it
//! on abort. Every state change goes through the target's machine
//! ([`Live::apply`]).

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use lpm_engine::{Parked, ParkedConnection};
use lpm_host::partition::{PartitionSpec, Plumbing};
use lpm_migrate::handover::{self, Action, Failure, Msg, Target, TargetAction, TargetInput, TargetState};
use lpm_migrate::journal::{Record, Side};
use lpm_migrate::store::Store;
use lpm_wire::{FrameType, PagesHeader};
use serde::{Deserialize, Serialize};

use super::{point, resolve, scratch_dir, status_of, Link, ASK_AFTER};
use crate::api::Mover;
use crate::fault;
use crate::fill::Filling;
use crate::state::{lock, Agent};

/// A parked tree as the record keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ParkedRecord {
    root_pid: i32,
    pids: Vec<i32>,
    cgroup: PathBuf,
    /// (pid, fd, image file id, window probe) of each connection in
    /// repair mode.
    connections: Vec<(i32, u32, u32, bool)>,
}

impl ParkedRecord {
    fn of(p: &Parked) -> ParkedRecord {
        ParkedRecord {
            root_pid: p.root_pid,
            pids: p.pids.clone(),
            cgroup: p.cgroup.clone(),
            connections: p.connections.iter().map(|c| (c.pid, c.fd, c.file_id, c.probe)).collect(),
        }
    }

    fn parked(&self) -> Parked {
        let conns = self.connections.iter().map(|&(pid, fd, file_id, probe)| ParkedConnection { pid, fd, file_id, probe }).collect();
        Parked::from_parts(self.root_pid, self.pids.clone(), self.cgroup.clone(), conns)
    }
}

/// What the target records beside its state, to resume after a restart.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Detail {
    /// The page store and the image.
    dir: PathBuf,
    /// The restored tree, once parked.
    parked: Option<ParkedRecord>,
    /// The lazy fill's process.
    fill_pid: Option<i32>,
}

/// An incoming migration, not settled yet.
pub(crate) struct Live {
    /// Its id.
    pub id: String,
    /// The partition.
    pub partition: String,
    turn: Mutex<Turn>,
    /// The page store, made at prepare: every stream stores into it
    /// without taking the migration's lock.
    store: OnceLock<Arc<Mutex<Store>>>,
    /// A resolver asks the source.
    pub resolving: Arc<AtomicBool>,
}

/// What the target made for the migration; all of it goes on destroy.
#[derive(Default)]
struct Res {
    /// The plumbing, while it is being made (and whether the vessel went
    /// into its cgroups).
    preparing: Option<std::thread::JoinHandle<Result<Prepared>>>,
    plumbing: Option<Plumbing>,
    /// The partition's announcement, ready to send (its socket is closed
    /// after the stop: closing waits out an RCU grace period).
    announcer: Option<lpm_sys::arp::Announcer>,
    /// The restore vessel went into the plumbing's cgroups.
    vessel_placed: bool,
    parked: Option<Parked>,
    filling: Option<Filling>,
}

/// The machine and what its actions need.
struct Turn {
    machine: Target,
    durable: Option<TargetState>,
    record: Record,
    detail: Detail,
    res: Res,
    restore_ms: f64,
    verify_ms: f64,
    /// Why it rolls back, for the source.
    why: String,
    /// A record being written beside the action after it (a restore, or
    /// the copy let run): the state and the write. Every other action,
    /// and the end of each input, waits for it first.
    writing: Option<(TargetState, std::thread::JoinHandle<Result<(), lpm_migrate::journal::JournalError>>)>,
}

/// What carrying out one action of the target leads to.
type Next = handover::Next<TargetInput>;

impl Live {
    fn new(agent: &Arc<Agent>, record: Record, detail: Detail, durable: Option<TargetState>) -> Arc<Live> {
        let live = Arc::new(Live {
            id: record.id.clone(),
            partition: record.partition.clone(),
            turn: Mutex::new(Turn {
                machine: durable.map_or_else(Target::new, Target::at),
                durable,
                record,
                detail,
                res: Res::default(),
                restore_ms: 0.0,
                verify_ms: 0.0,
                why: String::new(),
                writing: None,
            }),
            store: OnceLock::new(),
            resolving: Arc::new(AtomicBool::new(false)),
        });
        agent.register(&live.id, live.clone());
        live
    }

    /// The migration as recorded, after a restart of lpmd.
    pub(crate) fn resume(agent: &Arc<Agent>, record: Record, state: TargetState) -> Arc<Live> {
        let detail: Detail = serde_json::from_value(record.detail.clone()).unwrap_or_default();
        Live::new(agent, record, detail, Some(state))
    }

    /// Its record as it stands.
    pub(crate) fn record(&self) -> Record {
        lock(&self.turn).record.clone()
    }

    fn state(&self) -> Option<TargetState> {
        lock(&self.turn).machine.state()
    }

    /// Takes one input: the transition and all of its actions, under the
    /// migration's lock. `session` is the connection the migration came
    /// on (its restore vessel), when the input came there.
    pub(crate) fn apply(
        self: &Arc<Self>,
        agent: &Arc<Agent>,
        input: TargetInput,
        mut link: Option<&mut Link>,
        mut session: Option<&mut Session>,
    ) {
        let mut turn = lock(&self.turn);
        let whole = handover::drive(
            &mut *turn,
            |t: &mut Turn| &mut t.machine,
            input,
            |turn, a| self.act(agent, turn, a, link.as_deref_mut(), session.as_deref_mut()),
            |e| tracing::warn!(id = %self.id, error = %e, "refused"),
        );
        // No write outlives the input that started it.
        let written = self.written(&mut turn) == Next::Done;
        let whole = whole && written;
        if !whole {
            turn.machine = turn.durable.map_or_else(Target::new, Target::at);
        }
    }

    fn act(
        self: &Arc<Self>,
        agent: &Arc<Agent>,
        turn: &mut Turn,
        a: TargetAction,
        link: Option<&mut Link>,
        session: Option<&mut Session>,
    ) -> Next {
        let pt = point("target", &a, TargetState::name);
        // Only the restore and letting the copy run go on beside a record
        // being written (model-checked in both orders: lpm_migrate::model,
        // Sabotage::TargetActsFirst); everything else follows it.
        if !matches!(a, Action::Run | Action::Restore) && self.written(turn) == Next::Halt {
            return Next::Halt;
        }
        if let Action::Send(m) = a {
            return self.send(turn, m, &pt, link);
        }
        if let Err(e) = fault::point(&pt) {
            tracing::warn!(id = %self.id, error = format!("{e:#}"), "action failed");
            turn.why = format!("{e:#}");
            return if matches!(a, Action::Record(_)) { Next::Halt } else { Next::Then(TargetInput::Fail(Failure::Step)) };
        }
        let step = |r: Result<()>, turn: &mut Turn, what: &str| match r {
            Ok(()) => Next::Done,
            Err(e) => {
                tracing::warn!(id = %self.id, partition = %self.partition, error = format!("{e:#}"), "{what}");
                turn.why = format!("{what}: {e:#}");
                Next::Then(TargetInput::Fail(Failure::Step))
            }
        };
        match a {
            Action::Record(s) => self.record_state(agent, turn, s),
            Action::Answer => {
                if let Some(l) = link {
                    let _ = l.send(&Mover::Status { id: self.id.clone(), state: status_of(&turn.record), reply: false });
                }
                Next::Done
            }
            Action::Prepare => match session {
                Some(s) => {
                    let r = self.prepare(agent, turn, s);
                    step(r, turn, "prepare the partition")
                }
                None => step(Err(anyhow!("no connection to prepare on")), turn, "prepare the partition"),
            },
            Action::Restore => match session {
                Some(s) => match self.restore(agent, turn, s) {
                    Ok(()) => Next::Then(TargetInput::RestoreDone),
                    Err(e) => step(Err(e), turn, "restore the partition"),
                },
                None => step(Err(anyhow!("no connection to restore from")), turn, "restore the partition"),
            },
            Action::Run => {
                self.run(agent, turn);
                Next::Done
            }
            Action::Destroy => {
                // The tree spawned ahead goes first: its puppets hold pids
                // in the partition's namespaces.
                if let Some(s) = session {
                    s.ahead = None;
                }
                self.destroy(agent, turn);
                Next::Done
            }
            Action::Resolve => {
                resolve(agent, super::Live::Target(self.clone()));
                Next::Done
            }
            Action::Finish => {
                turn.record.settled = true;
                if let Err(e) = agent.journal.write(&turn.record) {
                    tracing::warn!(id = %self.id, error = format!("{:#}", anyhow::Error::from(e)), "settle the record");
                }
                agent.settle(&self.id);
                let _ = fs::remove_dir_all(&turn.detail.dir);
                Next::Done
            }
            Action::Send(_) => unreachable!("sent above"),
            Action::Freeze | Action::Resume => {
                tracing::error!(id = %self.id, action = ?a, "an action the target cannot carry out");
                Next::Done
            }
        }
    }

    fn record_state(&self, agent: &Agent, turn: &mut Turn, s: TargetState) -> Next {
        turn.record.enter(Side::Target(s));
        turn.record.detail = serde_json::to_value(&turn.detail).unwrap_or_default();
        if s == TargetState::RolledBack && turn.record.ending.is_none() && !turn.why.is_empty() {
            turn.record.ending = Some(lpm_migrate::journal::Ending { step: "target".into(), cause: turn.why.clone() });
        }
        // The stop's two records whose next action is long (the restore)
        // or on the way to the partition running (letting it run) are
        // written beside it: each fsync is a few milliseconds, tens when
        // the disk is busy.
        if matches!(s, TargetState::Restoring | TargetState::Running) {
            let (journal, record) = (agent.journal.clone(), turn.record.clone());
            turn.writing = Some((s, std::thread::spawn(move || journal.write(&record))));
            return Next::Done;
        }
        self.wrote(turn, s, agent.journal.write(&turn.record))
    }

    /// Waits for the record being written beside an action, if any.
    fn written(&self, turn: &mut Turn) -> Next {
        let Some((s, h)) = turn.writing.take() else { return Next::Done };
        let r = h.join().unwrap_or_else(|_| {
            Err(lpm_migrate::journal::JournalError::Io {
                op: "write (the writer panicked)",
                path: PathBuf::from(&self.id),
                source: std::io::Error::other("panicked"),
            })
        });
        self.wrote(turn, s, r)
    }

    fn wrote(&self, turn: &mut Turn, s: TargetState, r: Result<(), lpm_migrate::journal::JournalError>) -> Next {
        if let Err(e) = r {
            tracing::error!(id = %self.id, state = s.name(), error = format!("{:#}", anyhow::Error::from(e)), "cannot record the migration's state; it stays where its record says");
            return Next::Halt;
        }
        turn.durable = Some(s);
        tracing::info!(id = %self.id, partition = %self.partition, state = s.name(), "migration state");
        Next::Done
    }

    fn send(&self, turn: &mut Turn, m: Msg, pt: &str, link: Option<&mut Link>) -> Next {
        match fault::dropped(pt) {
            Ok(true) => return Next::Done,
            Ok(false) => {}
            Err(_) => return Next::Then(TargetInput::Fail(Failure::PeerLost)),
        }
        let msg = match m {
            Msg::Prepared => Mover::Prepared,
            Msg::RoundDone(round) => {
                // Every page before it is stored, and the partition's
                // plumbing is ready before the source may stop it.
                if let Err(e) = ready(&mut turn.res) {
                    turn.why = format!("prepare the partition: {e:#}");
                    tracing::warn!(id = %self.id, error = format!("{e:#}"), "prepare the partition");
                    return Next::Then(TargetInput::Fail(Failure::Step));
                }
                Mover::RoundDone { round }
            }
            Msg::Restored => Mover::Restored { restore_ms: turn.restore_ms, verify_ms: turn.verify_ms },
            Msg::Running => Mover::Running,
            Msg::RolledBack => Mover::RolledBack { why: if turn.why.is_empty() { "rolled back".into() } else { turn.why.clone() } },
            other => {
                tracing::error!(id = %self.id, message = ?other, "a message the target does not send");
                return Next::Done;
            }
        };
        let Some(l) = link else { return Next::Done };
        if matches!(m, Msg::RolledBack) {
            l.set_write_timeout(Duration::from_millis(500));
        }
        match l.send(&msg) {
            Ok(()) => Next::Done,
            Err(e) => {
                tracing::warn!(id = %self.id, error = format!("{e:#}"), "send {m:?}");
                Next::Then(TargetInput::Fail(Failure::PeerLost))
            }
        }
    }

    /// The page store, the restore vessel and the plumbing (namespaces,
    /// NIC off the bridge, cgroup): the store and the vessel here, by the
    /// thread that will restore (it traces the vessel); the plumbing on a
    /// thread while the first round's pages arrive (its end waits for it).
    fn prepare(&self, agent: &Agent, turn: &mut Turn, s: &mut Session) -> Result<()> {
        let spec = turn.record.spec.clone();
        let dir = turn.detail.dir.clone();
        lpm_image::create_private_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        let store = Arc::new(Mutex::new(Store::create(&dir).context("page store")?));
        let _ = self.store.set(store.clone());
        lock(&agent.incoming).insert(self.id.clone(), store);
        // Without a vessel (or a fill process started ahead) the restore
        // only takes longer.
        // The vessel takes a partition's mount namespace ahead (see
        // Vessel::own_mounts): a partition's root owns one.
        s.vessel = lpm_engine::Vessel::spawn()
            .and_then(|v| v.own_mounts().map(|()| v))
            .map_err(|e| tracing::warn!(partition = %spec.name, error = %e, "no restore vessel"))
            .ok();
        s.spare = crate::fill::Spare::spawn(&spec.name)
            .map_err(|e| tracing::warn!(partition = %spec.name, error = format!("{e:#}"), "no fill process started ahead"))
            .ok();
        let vessel_pid = s.vessel.as_ref().map(|v| v.pid());
        let ctx = agent.ctx.clone();
        turn.res.preparing = Some(std::thread::spawn(move || -> Result<Prepared> {
            let p = Plumbing::create(&ctx, &spec, false).with_context(|| format!("prepare partition {}", spec.name))?;
            // Without it the announcement opens a socket in the stop.
            let announcer =
                p.announcer().map_err(|e| tracing::warn!(partition = %spec.name, error = %e, "no announcement made ahead")).ok().flatten();
            let placed = vessel_pid.is_some_and(|pid| {
                lpm_engine::Vessel::place(pid, &p.cgroup().dirs())
                    .map_err(|e| tracing::warn!(partition = %spec.name, error = %e, "no restore vessel"))
                    .is_ok()
            });
            Ok((p, placed, announcer))
        }));
        Ok(())
    }

    /// Restores the received state and parks it: complete, frozen in the
    /// partition's cgroup, detached, its lazy fill handed to a process of
    /// its own. From here the copy outlives lpmd.
    fn restore(&self, agent: &Agent, turn: &mut Turn, s: &mut Session) -> Result<()> {
        let t = Instant::now();
        let placed = ready(&mut turn.res)?;
        if !placed {
            s.vessel = None;
        }
        let (external_netns, hot) = s.restore.take().unwrap_or_default();
        let p = turn.res.plumbing.as_ref().ok_or_else(|| anyhow!("the partition's plumbing is missing"))?;
        let opts = lpm_engine::RestoreOptions {
            netns: if external_netns { Some(p.netns().fd().context("open the partition's network namespace")?) } else { None },
            cgroups: p.cgroup().dirs(),
            defer_tcp: true,
            // The lazy fill keeps the stop from growing with memory;
            // LPM_EAGER_FILL=1 in lpmd's environment copies everything
            // during the stop instead.
            lazy_fill: std::env::var_os("LPM_EAGER_FILL").is_none(),
            vessel: s.vessel.take(),
            hot,
            // A copy that differs from what the source had must never
            // run: the migration rolls back instead.
            verify: true,
            shell_job: false,
        };
        let mut held = lpm_engine::restore_held_with(&turn.detail.dir, &opts, s.ahead.take())
            .with_context(|| format!("restore partition {}", turn.record.spec.name))?;
        match &held.ahead {
            Some(lpm_engine::AheadOutcome::Reused { processes }) => {
                tracing::info!(id = %self.id, processes, "restore reused the tree spawned ahead")
            }
            Some(lpm_engine::AheadOutcome::Discarded { why }) => {
                tracing::info!(id = %self.id, why, "restore discarded the tree spawned ahead")
            }
            None => {}
        }
        let restored = t.elapsed();
        turn.verify_ms = held.verified.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        fault::point("target.restored")?;
        // The fill goes first: the parked tree must not wait for pages
        // nobody serves (it fills the frozen tree, and runs on if lpmd dies).
        let filling = held.take_lazy().map(|lazy| match s.spare.take() {
            Some(spare) => spare.start(lazy),
            None => crate::fill::start(&turn.record.spec.name, lazy),
        });
        let filled = t.elapsed();
        let parked = held.park(&p.cgroup().v2_dir()).context("park the restored partition")?;
        tracing::debug!(
            id = %self.id,
            restore_ms = restored.as_secs_f64() * 1e3,
            fill_ms = (filled - restored).as_secs_f64() * 1e3,
            park_ms = (t.elapsed() - filled).as_secs_f64() * 1e3,
            "restored and parked"
        );
        turn.detail.parked = Some(ParkedRecord::of(&parked));
        turn.detail.fill_pid = filling.as_ref().and_then(|f| f.pid);
        turn.res.parked = Some(parked);
        turn.res.filling = filling;
        turn.restore_ms = t.elapsed().as_secs_f64() * 1e3;
        let _ = agent;
        Ok(())
    }

    /// Go: network first (releasing the tree sends what its connections
    /// hold, which must reach their peers), then the connections leave
    /// repair mode and the tree thaws; the partition is recorded here and
    /// announced. Safe to repeat after a crash part way.
    fn run(&self, agent: &Arc<Agent>, turn: &mut Turn) {
        let spec = turn.record.spec.clone();
        let plumbing = match turn.res.plumbing.take().or_else(|| ready(&mut turn.res).ok().and_then(|_| turn.res.plumbing.take())) {
            Some(p) => Ok(p),
            None => Plumbing::open(&agent.ctx, &spec),
        };
        let plumbing = match plumbing {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(id = %self.id, partition = %spec.name, error = %e, "run: the partition's plumbing is gone");
                return;
            }
        };
        let t = Instant::now();
        if let Err(e) = plumbing.unlock_network() {
            tracing::warn!(id = %self.id, partition = %spec.name, error = %e, "network unlock");
        }
        let parked = turn.res.parked.take().or_else(|| turn.detail.parked.as_ref().map(ParkedRecord::parked));
        let Some(parked) = parked else {
            tracing::error!(id = %self.id, partition = %spec.name, "run: no parked tree recorded");
            return;
        };
        let unlocked = t.elapsed();
        if let Err(e) = parked.run(&turn.detail.dir) {
            tracing::error!(id = %self.id, partition = %spec.name, error = %e, "run: the tree runs, but a connection of it failed");
        }
        let thawed = t.elapsed();
        // Before "running" reaches the source: the frames it held for the
        // partition follow the network to here (lpm_host::hold).
        let announcer = turn.res.announcer.take();
        let announced = match &announcer {
            Some(a) => a.send().map_err(anyhow::Error::from),
            None => plumbing.announce_once().map_err(anyhow::Error::from),
        };
        if let Err(e) = announced {
            tracing::warn!(id = %self.id, partition = %spec.name, error = format!("{e:#}"), "gratuitous ARP");
        }
        let announced = t.elapsed();
        let filling = turn.res.filling.take().map(|f| f.handle);
        if let Err(e) = agent.adopt(spec.clone(), plumbing, parked.root_pid, filling) {
            tracing::error!(id = %self.id, partition = %spec.name, error = format!("{e:#}"), "record the partition that arrived");
        }
        lock(&agent.incoming).remove(&self.id);
        tracing::debug!(
            id = %self.id,
            unlock_ms = unlocked.as_secs_f64() * 1e3,
            thaw_ms = (thawed - unlocked).as_secs_f64() * 1e3,
            announce_ms = (announced - thawed).as_secs_f64() * 1e3,
            adopt_ms = (t.elapsed() - announced).as_secs_f64() * 1e3,
            "run steps"
        );
        tracing::info!(id = %self.id, partition = %spec.name, from = %turn.record.source, pid = parked.root_pid, "partition arrived");
        // Repeats over a few hundred milliseconds; the partition runs.
        let (ctx, spec2) = (agent.ctx.clone(), spec);
        std::thread::spawn(move || {
            drop(announcer);
            if let Err(e) = Plumbing::open(&ctx, &spec2).map_err(anyhow::Error::from).and_then(|p| Ok(p.announce()?)) {
                tracing::warn!(partition = %spec2.name, error = format!("{e:#}"), "gratuitous ARP");
            }
        });
    }

    /// Everything made for the migration here goes: the tree (restored or
    /// half made), its fill, the plumbing, the store. Safe to repeat.
    fn destroy(&self, agent: &Agent, turn: &mut Turn) {
        let name = turn.record.spec.name.clone();
        // What is still being made is removed with the rest.
        match turn.res.preparing.take().map(|h| h.join()) {
            Some(Ok(Ok((p, _, _)))) => turn.res.plumbing = Some(p),
            Some(Ok(Err(e))) => tracing::warn!(partition = %name, error = format!("{e:#}"), "prepare the incoming partition"),
            _ => {}
        }
        if let Some(pid) = turn.detail.fill_pid.or(turn.res.filling.as_ref().and_then(|f| f.pid)) {
            let ours = fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"fill"));
            if ours {
                lpm_sys::misc::kill(pid, libc::SIGKILL);
            }
        }
        turn.res.parked = None;
        turn.res.plumbing = None;
        if let Err(e) = crate::orphans::remove_partition(&agent.ctx, &name) {
            tracing::warn!(id = %self.id, partition = %name, error = format!("{:#}", anyhow::Error::from(e)), "remove the incoming partition");
        }
        if let Some(f) = turn.res.filling.take() {
            let _ = f.handle.join();
        }
        lock(&agent.incoming).remove(&self.id);
        let _ = fs::remove_dir_all(&turn.detail.dir);
        tracing::info!(id = %self.id, partition = %name, "incoming copy removed");
    }
}

/// What the prepare's thread made: the plumbing, whether the vessel went
/// into its cgroups, the announcement.
type Prepared = (Plumbing, bool, Option<lpm_sys::arp::Announcer>);

/// Waits for the plumbing being made and keeps it; whether the vessel went
/// into its cgroups.
fn ready(res: &mut Res) -> Result<bool> {
    if let Some(h) = res.preparing.take() {
        let (p, placed, announcer) = h.join().map_err(|_| anyhow!("preparing the partition panicked"))??;
        res.plumbing = Some(p);
        res.vessel_placed = placed;
        res.announcer = announcer;
    }
    if res.plumbing.is_none() {
        bail!("the partition was not prepared");
    }
    Ok(res.vessel_placed)
}

/// A restore vessel with its own mount namespace, placed in `cgroups`.
fn placed_vessel(cgroups: &[PathBuf]) -> Result<lpm_engine::Vessel> {
    let v = lpm_engine::Vessel::spawn().and_then(|v| v.own_mounts().map(|()| v)).context("spawn a restore vessel")?;
    lpm_engine::Vessel::place(v.pid(), cgroups).context("place the restore vessel")?;
    Ok(v)
}

/// The provisional description a Blob frame carries, when it is one
/// ([`super::PROVISIONAL_BLOB`]); a malformed one is no description.
pub(crate) fn provisional(payload: &[u8]) -> Option<lpm_image::TreeImage> {
    let (name, off, data) = unblob(payload).ok()?;
    if name != super::PROVISIONAL_BLOB || off != 0 {
        return None;
    }
    lpm_image::decode_tree(data, Path::new(name)).map_err(|e| tracing::warn!(error = %e, "malformed provisional description")).ok()
}

/// Per process (pid in the image), the page ranges to fill before the
/// tree runs.
type HotPages = HashMap<u32, Vec<(u64, u64)>>;

/// The connection an incoming migration came on: what only the thread
/// serving it may hold (the restore vessel, which it traces).
pub(crate) struct Session {
    /// The migration.
    pub live: Arc<Live>,
    vessel: Option<lpm_engine::Vessel>,
    /// The lazy fill's process, started at prepare so that the stop only
    /// hands it the fill.
    spare: Option<crate::fill::Spare>,
    /// The Restore message's parameters, for the restore.
    restore: Option<(bool, HotPages)>,
    /// The tree spawned ahead from the source's provisional description
    /// (lpm_engine::ahead), traced by this thread.
    ahead: Option<lpm_engine::Ahead>,
}

impl Session {
    /// A new incoming migration (`Prepare`): its record, its machine, and
    /// the prepare itself.
    pub(crate) fn prepare(
        agent: &Arc<Agent>,
        id: &str,
        spec: PartitionSpec,
        source: &str,
        source_addr: &str,
        link: &mut Link,
    ) -> Result<Session> {
        spec.validate().context("invalid partition spec")?;
        if !lpm_migrate::journal::valid_id(id) {
            bail!("{id:?} is not a migration id");
        }
        if agent.live(id).is_some() || agent.journal.read(id)?.is_some() {
            bail!("migration {id} is known here already");
        }
        if agent.under_way(false) >= agent.opts.max_incoming {
            bail!("{} incoming migrations under way, the most this host takes at once", agent.opts.max_incoming);
        }
        if agent.parts().contains_key(&spec.name) || agent.migrations_of(&spec.name) > 0 {
            bail!("partition {} exists here, or is arriving already", spec.name);
        }
        let dir = scratch_dir(agent, "in", id);
        let record = Record::new(id, &spec, source, &agent.opts.host, source_addr, Side::Target(TargetState::Prepared));
        let live = Live::new(agent, record, Detail { dir, ..Default::default() }, None);
        let mut s = Session { live: live.clone(), vessel: None, spare: None, restore: None, ahead: None };
        live.apply(agent, TargetInput::Message(Msg::Prepare), Some(link), Some(&mut s));
        Ok(s)
    }

    /// Stores a Pages frame.
    pub(crate) fn pages(&self, payload: &[u8]) -> Result<()> {
        fault::point("target.pages")?;
        let store = self.live.store.get().ok_or_else(|| anyhow!("pages before prepare"))?;
        let (h, data) = PagesHeader::decode(payload).ok_or_else(|| anyhow!("malformed pages frame"))?;
        // The store's lock only to find the file: the other streams store
        // meanwhile.
        let file = lock(store).file(h.pid as i32).context("store pages")?;
        file.write(h.vaddr, data).context("store pages")
    }

    /// Writes a Blob frame into the image directory.
    pub(crate) fn blob(&self, payload: &[u8]) -> Result<()> {
        fault::point("target.image")?;
        let dir = lock(&self.live.turn).detail.dir.clone();
        let (name, off, data) = unblob(payload)?;
        let path = dir.join(name);
        let file = lpm_image::private_file()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        file.write_all_at(data, off).with_context(|| format!("write {}", path.display()))
    }

    /// A provisional description of the tree arrived: the tree spawned
    /// from the last one goes, and the tree is spawned from this one, from
    /// the vessel (a new one is made and placed for the stop's own use
    /// should the tree made ahead not fit then). Nothing here fails the
    /// migration: without a tree made ahead the stop spawns it.
    pub(crate) fn provisional(&mut self, agent: &Agent, desc: lpm_image::TreeImage) {
        if self.ahead.take().is_some() && desc.processes.is_empty() {
            tracing::info!(id = %self.live.id, "tree spawned ahead withdrawn");
        }
        if self.live.state() != Some(TargetState::Prepared) || desc.processes.is_empty() {
            return;
        }
        if let Some(why) = lpm_engine::ahead::refusal(&desc) {
            tracing::info!(id = %self.live.id, why, "tree not spawned ahead");
            return;
        }
        let t = Instant::now();
        let made = (|| -> Result<lpm_engine::Ahead> {
            let (netns, cgroups, placed) = {
                let mut turn = lock(&self.live.turn);
                let placed = ready(&mut turn.res)?;
                let p = turn.res.plumbing.as_ref().ok_or_else(|| anyhow!("the partition's plumbing is missing"))?;
                let external = desc.processes.iter().any(|p| p.namespaces.as_ref().is_some_and(|n| n.net_external));
                let netns = if external { Some(p.netns().fd().context("open the partition's network namespace")?) } else { None };
                (netns, p.cgroup().dirs(), placed)
            };
            let vessel = match self.vessel.take().filter(|_| placed) {
                Some(v) => v,
                None => placed_vessel(&cgroups)?,
            };
            let ahead = lpm_engine::ahead::build(desc, netns, &cgroups, vessel).context("spawn the tree ahead")?;
            // The stop's own spawn, should the tree made ahead not fit
            // then, still starts from a vessel.
            self.vessel = placed_vessel(&cgroups)
                .map_err(|e| tracing::warn!(partition = %self.live.partition, error = format!("{e:#}"), "no restore vessel"))
                .ok();
            Ok(ahead)
        })();
        match made {
            Ok(a) => {
                tracing::info!(id = %self.live.id, processes = a.processes(), ms = t.elapsed().as_secs_f64() * 1e3, "tree spawned ahead");
                self.ahead = Some(a);
            }
            Err(e) => tracing::warn!(id = %self.live.id, error = format!("{e:#}"), "tree not spawned ahead"),
        }
        let _ = agent;
    }

    /// The parameters of the restore the next `Restore` asks for.
    pub(crate) fn restore_with(&mut self, external_netns: bool, hot: HotPages) {
        self.restore = Some((external_netns, hot));
    }

    /// Once the copy is recorded complete, a word from the source is due
    /// at once: should it not come soon, the connection is given up and a
    /// resolver asks.
    pub(crate) fn after_restored(&mut self, _agent: &Arc<Agent>, link: &mut Link) {
        if self.live.state() == Some(TargetState::Restored) {
            link.set_read_timeout(ASK_AFTER);
        }
    }

    /// The connection broke or timed out.
    pub(crate) fn lost(&mut self, agent: &Arc<Agent>, link: &mut Link, why: &str) {
        let live = self.live.clone();
        lock(&live.turn).why = format!("lost the source: {why}");
        live.apply(agent, TargetInput::Fail(Failure::PeerLost), Some(link), Some(self));
    }

    /// A step of this side failed (storing pages, writing the image).
    pub(crate) fn failed(&mut self, agent: &Arc<Agent>, link: &mut Link, why: &str) {
        let live = self.live.clone();
        lock(&live.turn).why = why.to_string();
        live.apply(agent, TargetInput::Fail(Failure::Step), Some(link), Some(self));
    }
}

/// An extra page stream of an incoming migration: pages into the shared
/// store, and an answer at the end of each round once they are in.
pub(crate) fn page_stream(agent: &Agent, id: &str, link: &mut Link) -> Result<()> {
    let store = lock(&agent.incoming).get(id).cloned();
    let store = store.ok_or_else(|| anyhow!("a page stream for {id:?}, which is no incoming migration here"))?;
    let mut frames = lpm_wire::FrameReader::new();
    loop {
        let (kind, payload) = match frames.read(&mut link.r) {
            Ok(f) => f,
            // The source closes its streams when the migration ends.
            Err(lpm_wire::WireError::Io { .. }) => return Ok(()),
            Err(e) => return Err(e).context("receive on a page stream"),
        };
        match kind {
            FrameType::Pages => {
                fault::point("target.pages")?;
                let (h, data) = PagesHeader::decode(payload).ok_or_else(|| anyhow!("malformed pages frame"))?;
                let file = lock(&store).file(h.pid as i32).context("store pages")?;
                file.write(h.vaddr, data).context("store pages")?;
            }
            FrameType::Control => match crate::api::decode::<Mover>(payload, "mover message")? {
                Mover::RoundEnd { round } => link.send(&Mover::RoundDone { round })?,
                other => bail!("unexpected {other:?} on a page stream"),
            },
            other => bail!("unexpected {other:?} frame on a page stream"),
        }
    }
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
