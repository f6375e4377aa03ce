//! Carrying out a plan: its waves one after the other, the moves of a
//! wave at once, each re-checked against the inventory of the moment
//! before it starts; a failed move is recorded with its reason and the
//! others go on.
//!
//! The console service gives a [`Carrier`] (its inventory, its migrate,
//! its store and event channel); everything that decides what happens is
//! here, so it is tested without hosts.
//!
//! Why waves and not a pool of moves started as slots free: the planner
//! cut the waves to the concurrency limits, and its headroom rule (a host
//! only sends or only receives in a plan) makes any order safe, so a pool
//! would be safe too; but a wave that ends whole before the next starts
//! gives a re-check against an inventory with nothing of the plan in
//! flight, and progress an operator can follow ("wave 2 of 5").

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::inventory::{Health, Inventory, PartitionState, Rules};
use crate::model::{Model, PlanError};
use crate::plan::{Left, Move, Plan, Policy};

/// What became of one move of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Its wave has not started.
    Waiting,
    /// Its migration runs.
    Running,
    /// The partition is on its target.
    Moved {
        /// The console's migration id.
        migration: String,
    },
    /// The migration was tried and failed (or could not start): the
    /// partition stays on its source.
    Failed {
        /// The console's migration id, when one was started.
        migration: Option<String>,
        /// Why.
        reason: String,
    },
    /// Not tried: the re-check before its start found it could not go.
    Skipped {
        /// Why.
        reason: String,
    },
}

/// One move of a plan and what became of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MoveRecord {
    /// The wave, from 1.
    pub wave: usize,
    /// The move as planned.
    #[serde(flatten)]
    pub planned: Move,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// A partition named with why it did not move.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Named {
    /// The partition.
    pub partition: String,
    /// Why.
    pub reason: String,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Partitions moved.
    pub moved: Vec<String>,
    /// Moves tried that failed, with their reasons.
    pub failed: Vec<Named>,
    /// Moves not tried, with their reasons (the re-check before the
    /// start).
    pub skipped: Vec<Named>,
    /// Partitions the plan concerns that it could not move, with their
    /// reasons (validation's refusals, pinned, no room anywhere, ...).
    pub not_movable: Vec<Named>,
    /// Hosts that held partitions before the run and hold none after.
    pub hosts_freed: Vec<String>,
    /// Hosts up, out of maintenance, holding no partition after the run:
    /// they can be powered off.
    pub power_off: Vec<String>,
    /// Hosts in maintenance after the run.
    pub maintenance: Vec<String>,
}

/// Whether a run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Moves are under way or waiting.
    Running,
    /// Every move is done, failed or skipped.
    Finished,
    /// The console stopped before the run finished (a restart): the
    /// moves not finished are as their migrations' records say.
    Interrupted,
}

/// A plan being carried out, or carried out: what the store keeps and
/// GET /v1/plans/{id} shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Its id.
    pub id: String,
    /// Who asked for it.
    pub who: String,
    /// Running or finished.
    pub state: RunState,
    /// Start, milliseconds since the epoch.
    pub started_unix_ms: u64,
    /// End, when it has ended.
    pub ended_unix_ms: Option<u64>,
    /// The plan as made.
    pub plan: Plan,
    /// Every move of the plan, in order, with what became of it.
    pub moves: Vec<MoveRecord>,
    /// At the end.
    pub summary: Option<Summary>,
}

impl Run {
    /// A run of `plan` about to start, every move waiting.
    pub fn new(id: String, who: String, plan: Plan, started_unix_ms: u64) -> Run {
        let moves = plan
            .waves
            .iter()
            .enumerate()
            .flat_map(|(i, w)| w.moves.iter().map(move |m| MoveRecord { wave: i + 1, planned: m.clone(), outcome: Outcome::Waiting }))
            .collect();
        Run { id, who, state: RunState::Running, started_unix_ms, ended_unix_ms: None, plan, moves, summary: None }
    }

    /// Moves done (moved), failed, skipped, and in all.
    pub fn counts(&self) -> Counts {
        let mut c = Counts { total: self.moves.len(), ..Default::default() };
        for m in &self.moves {
            match m.outcome {
                Outcome::Moved { .. } => c.moved += 1,
                Outcome::Failed { .. } => c.failed += 1,
                Outcome::Skipped { .. } => c.skipped += 1,
                Outcome::Running => c.running += 1,
                Outcome::Waiting => {}
            }
        }
        c
    }

    /// The policy's words for the run ("evacuate h1", "balance").
    pub fn what(&self) -> String {
        match &self.plan.policy {
            Policy::Evacuate { host } => format!("evacuate {host}"),
            Policy::Balance => "balance".into(),
            Policy::Consolidate => "consolidate".into(),
        }
    }
}

/// How far a run is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Moves in the plan.
    pub total: usize,
    /// Moved.
    pub moved: usize,
    /// Failed.
    pub failed: usize,
    /// Skipped at the re-check.
    pub skipped: usize,
    /// Under way.
    pub running: usize,
}

/// One step of a run, as an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// A wave starts.
    Wave {
        /// Its number, from 1.
        wave: usize,
        /// Waves in all.
        of: usize,
    },
    /// A move's migration starts.
    Started {
        /// The partition.
        partition: String,
        /// Its source.
        from: String,
        /// Its target.
        to: String,
    },
    /// A move ended, skipped or was tried: its outcome.
    Ended {
        /// The partition.
        partition: String,
        /// What became of it.
        #[serde(flatten)]
        outcome: Outcome,
    },
    /// The run ended.
    Finished {
        /// Its summary.
        summary: Summary,
    },
}

/// What carrying out a plan needs from the console.
pub trait Carrier: Send + Sync + 'static {
    /// The inventory now: the re-check before each wave and the summary
    /// at the end read it.
    fn inventory(&self) -> impl Future<Output = Result<Inventory, String>> + Send;

    /// Move one partition and wait for the migration's end: the
    /// console's migration id when the partition runs on its target,
    /// else why not (with the id when a migration was started).
    fn migrate(&self, mv: &Move) -> impl Future<Output = Result<String, (Option<String>, String)>> + Send;

    /// The run changed (a step): record it and tell who listens. Awaited
    /// before the run goes on, so the record follows the steps in order.
    fn update(&self, run: &Run, step: &Step) -> impl Future<Output = ()> + Send;
}

/// Carry out `run` (made with [`Run::new`]): wave after wave, the moves
/// of a wave at once, each re-checked against the inventory of the moment
/// before its wave starts (with the wave's earlier moves counted), a
/// failed move recorded with its reason and the others carried on.
/// `before` is the inventory the plan was made from; `now_ms` gives the
/// time. Returns the run finished, with its summary.
pub async fn carry_out<C: Carrier>(carrier: Arc<C>, mut run: Run, rules: Rules, before: Inventory, now_ms: fn() -> u64) -> Run {
    let waves = run.plan.waves.len();
    for w in 1..=waves {
        carrier.update(&run, &Step::Wave { wave: w, of: waves }).await;
        let idx: Vec<usize> = (0..run.moves.len()).filter(|&i| run.moves[i].wave == w).collect();
        let planned: Vec<Move> = idx.iter().map(|&i| run.moves[i].planned.clone()).collect();
        let verdicts = match carrier.inventory().await {
            Ok(inv) => {
                recheck(&inv, &rules, &planned).unwrap_or_else(|e| vec![Err(format!("the inventory cannot be read: {e}")); planned.len()])
            }
            Err(e) => vec![Err(format!("the inventory cannot be read: {e}")); planned.len()],
        };
        let mut set = tokio::task::JoinSet::new();
        for (&i, verdict) in idx.iter().zip(verdicts) {
            let mv = run.moves[i].planned.clone();
            match verdict {
                Err(reason) => {
                    run.moves[i].outcome = Outcome::Skipped { reason };
                    let step = Step::Ended { partition: mv.partition.clone(), outcome: run.moves[i].outcome.clone() };
                    carrier.update(&run, &step).await;
                }
                Ok(()) => {
                    run.moves[i].outcome = Outcome::Running;
                    carrier
                        .update(&run, &Step::Started { partition: mv.partition.clone(), from: mv.from.clone(), to: mv.to.clone() })
                        .await;
                    let c = carrier.clone();
                    set.spawn(async move { (i, c.migrate(&mv).await) });
                }
            }
        }
        while let Some(joined) = set.join_next().await {
            let (i, result) = match joined {
                Ok(r) => r,
                // A panic in the console's migrate: the move's outcome is
                // not known from here, and the task's index went with it.
                Err(e) => {
                    tracing::error!(run = %run.id, error = %e, "a move's task ended without a result");
                    continue;
                }
            };
            run.moves[i].outcome = match result {
                Ok(migration) => Outcome::Moved { migration },
                Err((migration, reason)) => Outcome::Failed { migration, reason },
            };
            let step = Step::Ended { partition: run.moves[i].planned.partition.clone(), outcome: run.moves[i].outcome.clone() };
            carrier.update(&run, &step).await;
        }
        // Moves whose task vanished are failed, never left "running".
        for m in run.moves.iter_mut().filter(|m| m.wave == w && m.outcome == Outcome::Running) {
            m.outcome = Outcome::Failed { migration: None, reason: "the console's task for this move ended without a result".into() };
        }
    }
    let after = carrier.inventory().await.ok();
    let summary = summarize(&run, &before, after.as_ref());
    run.state = RunState::Finished;
    run.ended_unix_ms = Some(now_ms());
    run.summary = Some(summary.clone());
    carrier.update(&run, &Step::Finished { summary }).await;
    run
}

/// A host after a run: name, up, in maintenance.
type HostAfter = (String, bool, bool);

/// The summary of `run`: what moved, failed and was skipped with
/// reasons, what the plan could not move, and the hosts after (from the
/// inventory `after` when it could be read, else from `before` with the
/// moves that succeeded applied).
pub fn summarize(run: &Run, before: &Inventory, after: Option<&Inventory>) -> Summary {
    let mut s = Summary::default();
    for m in &run.moves {
        let p = m.planned.partition.clone();
        match &m.outcome {
            Outcome::Moved { .. } => s.moved.push(p),
            Outcome::Failed { reason, .. } => s.failed.push(Named { partition: p, reason: reason.clone() }),
            Outcome::Skipped { reason } => s.skipped.push(Named { partition: p, reason: reason.clone() }),
            Outcome::Waiting | Outcome::Running => {}
        }
    }
    s.not_movable = run
        .plan
        .left
        .iter()
        .map(|Left { partition, host, reason }| Named { partition: partition.clone(), reason: format!("on {host}: {reason}") })
        .collect();
    let held_before: BTreeSet<&str> = before.partitions.iter().map(|p| p.host.as_str()).collect();
    // (name, up, in maintenance) per host; partition to host.
    let (hosts, placement): (Vec<HostAfter>, BTreeMap<String, String>) = match after {
        Some(inv) => (
            inv.hosts.iter().map(|h| (h.name.clone(), h.health == Health::Up, h.maintenance)).collect(),
            inv.partitions.iter().map(|p| (p.name.clone(), p.host.clone())).collect(),
        ),
        None => {
            let mut placement: BTreeMap<String, String> = before.partitions.iter().map(|p| (p.name.clone(), p.host.clone())).collect();
            for m in &run.moves {
                if matches!(m.outcome, Outcome::Moved { .. }) {
                    placement.insert(m.planned.partition.clone(), m.planned.to.clone());
                }
            }
            let maintenance: BTreeSet<&str> = run.plan.maintenance.iter().map(String::as_str).collect();
            let hosts = before
                .hosts
                .iter()
                .map(|h| (h.name.clone(), h.health == Health::Up, h.maintenance || maintenance.contains(h.name.as_str())))
                .collect();
            (hosts, placement)
        }
    };
    let held_after: BTreeSet<&str> = placement.values().map(String::as_str).collect();
    for (name, up, maintenance) in &hosts {
        let held = held_after.contains(name.as_str());
        if !held && held_before.contains(name.as_str()) {
            s.hosts_freed.push(name.clone());
        }
        if !held && *up && !maintenance {
            s.power_off.push(name.clone());
        }
        if *maintenance {
            s.maintenance.push(name.clone());
        }
    }
    s
}

/// Re-check `moves` (one wave's, started together) against `inv`, the
/// inventory now: each in turn with the ones before it that pass counted
/// on their targets. Ok for a move that can start, else why not.
pub fn recheck(inv: &Inventory, rules: &Rules, moves: &[Move]) -> Result<Vec<Result<(), String>>, PlanError> {
    let mut m = Model::new(inv, rules)?;
    let parts: BTreeMap<&str, usize> = inv.partitions.iter().enumerate().map(|(i, p)| (p.name.as_str(), i)).collect();
    let mut out = Vec::with_capacity(moves.len());
    for mv in moves {
        let verdict = (|| {
            let &p = parts.get(mv.partition.as_str()).ok_or_else(|| format!("partition {} is no longer in the inventory", mv.partition))?;
            let part = &inv.partitions[p];
            if part.host != mv.from {
                return Err(format!("partition {} is on {} now, not {}", mv.partition, part.host, mv.from));
            }
            if part.state == PartitionState::Migrating {
                return Err(format!("partition {} is in another migration", mv.partition));
            }
            let &t = m.by_name.get(mv.to.as_str()).ok_or_else(|| format!("target {} is no longer in the inventory", mv.to))?;
            let host = &inv.hosts[t];
            if host.health == Health::Down {
                return Err(format!("target {} is down", mv.to));
            }
            if host.maintenance {
                return Err(format!("target {} is in maintenance", mv.to));
            }
            if !m.fits(p, t) {
                let free = m.limit[t] - m.used[t];
                let need = m.fp[p];
                return Err(if !need.within(free) {
                    format!(
                        "target {} no longer has room: {} needs {} MiB and {} mCPU, {} MiB and {} mCPU are free within headroom",
                        mv.to, mv.partition, need.memory_mib, need.cpu_milli, free.memory_mib, free.cpu_milli
                    )
                } else {
                    format!("target {} no longer takes {}: {}", mv.to, mv.partition, m.no_target(p))
                });
            }
            m.shift(p, t, mv.why.clone());
            Ok(())
        })();
        out.push(verdict);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::evacuate;
    use crate::inventory::{Host, Partition, Resources};

    /// A console whose migrations fail for the partitions named, and
    /// whose inventory follows the moves that succeed.
    struct Fake {
        inv: Mutex<Inventory>,
        fail: Vec<&'static str>,
        steps: Mutex<Vec<Step>>,
        /// Most migrations seen at once.
        at_once: Mutex<(usize, usize)>,
        /// Done before each migration starts (e.g. shrink a target).
        before_start: Box<dyn Fn(&mut Inventory) + Send + Sync>,
    }

    impl Carrier for Fake {
        async fn inventory(&self) -> Result<Inventory, String> {
            Ok(self.inv.lock().unwrap().clone())
        }

        async fn migrate(&self, mv: &Move) -> Result<String, (Option<String>, String)> {
            {
                let mut n = self.at_once.lock().unwrap();
                n.0 += 1;
                n.1 = n.1.max(n.0);
            }
            // Let the wave's other moves start before this one ends.
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
            self.at_once.lock().unwrap().0 -= 1;
            if self.fail.contains(&mv.partition.as_str()) {
                return Err((Some(format!("m-{}", mv.partition)), "the target refused the restore".into()));
            }
            let mut inv = self.inv.lock().unwrap();
            (self.before_start)(&mut inv);
            let p = inv.partitions.iter_mut().find(|p| p.name == mv.partition).unwrap();
            p.host = mv.to.clone();
            Ok(format!("m-{}", mv.partition))
        }

        async fn update(&self, _run: &Run, step: &Step) {
            self.steps.lock().unwrap().push(step.clone());
        }
    }

    fn fake(inv: &Inventory, fail: Vec<&'static str>) -> Fake {
        Fake {
            inv: Mutex::new(inv.clone()),
            fail,
            steps: Mutex::new(Vec::new()),
            at_once: Mutex::new((0, 0)),
            before_start: Box::new(|_| {}),
        }
    }

    fn go(c: &Arc<Fake>, plan: Plan, inv: &Inventory) -> Run {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let run = Run::new("r1".into(), "ann".into(), plan, 1);
        rt.block_on(carry_out(c.clone(), run, Rules::default(), inv.clone(), || 2))
    }

    fn three_hosts(parts: usize) -> Inventory {
        let mut inv = Inventory::default();
        for h in ["h1", "h2", "h3"] {
            inv.hosts.push(Host::new(h, Resources::new(10_000, 10_000)));
        }
        for i in 0..parts {
            inv.partitions.push(Partition::new(&format!("p{i}"), "h1", Resources::new(1000, 500)));
        }
        inv
    }

    #[test]
    fn evacuate_runs_its_waves_at_once_and_goes_on_past_a_failure() {
        let inv = three_hosts(6);
        let mut rules = Rules::default();
        rules.limits.max_outgoing = 4;
        let plan = evacuate(&inv, &rules, "h1").unwrap();
        assert_eq!(plan.waves.len(), 2, "{}", plan.render());
        let c = Arc::new(fake(&inv, vec!["p2"]));
        let run = go(&c, plan, &inv);
        let s = run.summary.clone().unwrap();
        assert_eq!(run.state, RunState::Finished);
        assert_eq!(s.moved.len(), 5, "{s:?}");
        assert_eq!(s.failed, vec![Named { partition: "p2".into(), reason: "the target refused the restore".into() }]);
        assert!(s.hosts_freed.is_empty(), "p2 stays on h1: {s:?}");
        assert_eq!(run.counts(), Counts { total: 6, moved: 5, failed: 1, skipped: 0, running: 0 });
        // The first wave's four moves ran at once.
        assert_eq!(c.at_once.lock().unwrap().1, 4);
        let steps = c.steps.lock().unwrap();
        assert!(matches!(steps.first(), Some(Step::Wave { wave: 1, of: 2 })));
        assert!(matches!(steps.last(), Some(Step::Finished { .. })));
        assert_eq!(steps.iter().filter(|s| matches!(s, Step::Started { .. })).count(), 6);
    }

    #[test]
    fn a_move_whose_target_filled_meanwhile_is_skipped_with_its_reason() {
        let inv = three_hosts(6);
        let plan = evacuate(&inv, &Rules::default(), "h1").unwrap();
        let mut c = fake(&inv, vec![]);
        // Something else fills h3 while the first wave runs.
        c.before_start = Box::new(|inv: &mut Inventory| {
            if !inv.partitions.iter().any(|p| p.name == "big") {
                inv.partitions.push(Partition::new("big", "h3", Resources::new(8_500, 100)));
            }
        });
        let c = Arc::new(c);
        let run = go(&c, plan, &inv);
        let s = run.summary.unwrap();
        assert!(!s.skipped.is_empty(), "{s:?}");
        for n in &s.skipped {
            assert!(n.reason.starts_with("target h3 no longer has room"), "{n:?}");
        }
        assert_eq!(s.moved.len() + s.skipped.len(), 6);
    }

    #[test]
    fn the_summary_names_what_the_plan_could_not_move_and_the_hosts_freed() {
        let mut inv = three_hosts(0);
        inv.partitions.push(Partition::new("a", "h1", Resources::new(2000, 500)));
        inv.partitions.push(Partition::new("b", "h1", Resources::new(2000, 500)));
        inv.partitions.push(Partition::new("c", "h2", Resources::new(1000, 500)));
        let mut pinned = Partition::new("d", "h3", Resources::new(1000, 500));
        pinned.mobility = crate::inventory::Mobility::Immovable { reason: "pid 7 fd 3: a user namespace".into() };
        inv.partitions.push(pinned);
        let plan = crate::consolidate(&inv, &Rules::default()).unwrap();
        let c = Arc::new(fake(&inv, vec![]));
        let run = go(&c, plan, &inv);
        let s = run.summary.unwrap();
        assert!(s.not_movable.iter().any(|n| n.partition == "d" && n.reason.contains("a user namespace")), "{s:?}");
        assert_eq!(s.hosts_freed, vec!["h2".to_string()], "{s:?}");
        assert_eq!(s.power_off, vec!["h2".to_string()]);
    }

    #[test]
    fn recheck_counts_the_wave_s_earlier_moves_and_names_what_changed() {
        let inv = three_hosts(3);
        let mut moves = evacuate(&inv, &Rules::default(), "h1").unwrap().moves().cloned().collect::<Vec<_>>();
        assert_eq!(moves.len(), 3);
        // Every move into h2: with room for two partitions only.
        let mut small = inv.clone();
        small.hosts[1].capacity = Resources::new(2500, 10_000);
        for m in &mut moves {
            m.to = "h2".into();
        }
        let v = recheck(&small, &Rules::default(), &moves).unwrap();
        assert!(v[0].is_ok() && v[1].is_ok(), "{v:?}");
        assert!(v[2].as_ref().unwrap_err().contains("no longer has room"), "{v:?}");
        let mut gone = small.clone();
        gone.partitions[0].host = "h3".into();
        gone.hosts[1].maintenance = true;
        let v = recheck(&gone, &Rules::default(), &moves).unwrap();
        assert_eq!(v[0], Err("partition p0 is on h3 now, not h1".into()));
        assert_eq!(v[1], Err("target h2 is in maintenance".into()));
    }
}
