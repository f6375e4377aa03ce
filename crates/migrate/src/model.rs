//! An exhaustive model check of the migration protocol: the two machines
//! of [`crate::handover`] (the very functions the agents run), a network
//! that loses, duplicates, delays and reorders any message, and hosts
//! whose agent crashes and restarts between any two actions.
//!
//! Every reachable state of that world is explored breadth first. In each
//! one the invariants hold:
//! - never two running copies;
//! - never zero copies: the source destroys its copy only when the
//!   target's record says its copy runs, and the target destroys its copy
//!   only while the source's copy exists;
//! - the target's copy runs only when the source's record says go;
//! - the target runs only a complete copy.
//!
//! And from each one, once faults stop (no more loss, duplication or
//! crash; timeouts, restarts and the resolvers' questions go on), the
//! world can still settle: exactly one copy runs, the other side holds
//! nothing, both records are final and no message is in flight.
//!
//! What the agents do physically is abstracted to what matters for those
//! properties: each side's copy (running, frozen, complete, destroyed),
//! its durable record (written by [`Action::Record`]) and its volatile
//! memory (the machine, the queue of actions still to carry out, whether a
//! restore or a resolver runs), which a crash loses. A crash of the
//! target while its restore runs kills the partial copy (the restore
//! traces it with PTRACE_O_EXITKILL); a complete copy is frozen in its
//! cgroup and detached, so it outlives the agent.

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::handover::{
    transition, Action, Decision, Failure, Msg, PeerState, Source, SourceAction, SourceInput, SourceState, Target, TargetAction,
    TargetInput, TargetState,
};

/// Bounds on the faults (and rounds) the exploration allows.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    /// Crashes of either agent, in all.
    pub crashes: u8,
    /// Messages duplicated, in all.
    pub duplicates: u8,
    /// Pre-copy rounds.
    pub rounds: u32,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds { crashes: 2, duplicates: 1, rounds: 2 }
    }
}

/// What an exploration found.
#[derive(Debug)]
pub struct Outcome {
    /// Distinct world states reached.
    pub states: usize,
    /// Transitions taken.
    pub transitions: usize,
    /// States in which every copy and record is settled.
    pub settled: usize,
    /// Broken invariants, each with the trace that leads to it (empty when
    /// the protocol is safe).
    pub violations: Vec<String>,
    /// States from which the world can no longer settle, with a trace.
    pub stuck: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum SourceCopy {
    Running,
    Frozen,
    Destroyed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum TargetCopy {
    None,
    Partial,
    Complete,
    Running,
    Destroyed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Dir {
    ToTarget,
    ToSource,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SourceSide {
    up: bool,
    /// The migration was asked for (once; a crash before its first record
    /// forgets it).
    begun: bool,
    mem: Source,
    durable: Option<SourceState>,
    resolving: bool,
    copy: SourceCopy,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TargetSide {
    up: bool,
    mem: Target,
    durable: Option<TargetState>,
    resolving: bool,
    restoring: bool,
    /// Plumbing, page store or scratch exist for the migration.
    made: bool,
    copy: TargetCopy,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct World {
    src: SourceSide,
    tgt: TargetSide,
    /// Messages in flight, with their number of copies.
    net: BTreeMap<(Dir, Msg), u8>,
    crashes_left: u8,
    dups_left: u8,
    sabotage: Sabotage,
}

/// One step of the world; `fault` steps are left out of the settling
/// check.
struct Step {
    label: String,
    fault: bool,
    next: World,
    violation: Option<String>,
}

impl World {
    fn initial() -> World {
        World {
            src: SourceSide { up: true, begun: false, mem: Source::new(), durable: None, resolving: false, copy: SourceCopy::Running },
            tgt: TargetSide {
                up: true,
                mem: Target::new(),
                durable: None,
                resolving: false,
                restoring: false,
                made: false,
                copy: TargetCopy::None,
            },
            net: BTreeMap::new(),
            crashes_left: 0,
            dups_left: 0,
            sabotage: Sabotage::None,
        }
    }

    fn send(&mut self, dir: Dir, m: Msg) {
        let n = self.net.entry((dir, m)).or_insert(0);
        // Resending what is in flight already adds nothing: one copy
        // stands for any number (duplication is a fault of its own).
        *n = (*n).max(1);
    }

    fn take(&mut self, key: (Dir, Msg)) {
        if let Some(n) = self.net.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.net.remove(&key);
            }
        }
    }

    fn source_status(&self) -> PeerState {
        self.src.durable.map_or(PeerState::Unknown, |state| PeerState::Source { state })
    }

    fn target_status(&self) -> PeerState {
        self.tgt.durable.map_or(PeerState::Unknown, |state| PeerState::Target { state })
    }

    /// Feeds an input to the source (a refused one becomes a failure, as
    /// the agent does) and carries out the actions, the agent crashing
    /// before action `crash` when given. Invariants are checked after each
    /// action.
    fn source_input(&mut self, input: SourceInput, crash: Option<usize>) -> Result<(), String> {
        let state = self.src.mem.state();
        let mut actions = transition(&mut self.src.mem, input).0;
        self.sabotage.source(state, input, &mut actions);
        for (k, a) in actions.into_iter().enumerate() {
            if crash == Some(k) {
                break;
            }
            self.source_act(a)?;
            if let Some(v) = self.invariant() {
                return Err(format!("{v} (after the source's {a:?})"));
            }
        }
        if crash.is_some() {
            self.crash_source();
        }
        Ok(())
    }

    fn target_input(&mut self, input: TargetInput, crash: Option<usize>) -> Result<(), String> {
        let mut actions = transition(&mut self.tgt.mem, input).0;
        self.sabotage.target(&mut actions);
        for (k, a) in actions.into_iter().enumerate() {
            if crash == Some(k) {
                break;
            }
            self.target_act(a)?;
            if let Some(v) = self.invariant() {
                return Err(format!("{v} (after the target's {a:?})"));
            }
        }
        if crash.is_some() {
            self.crash_target();
        }
        Ok(())
    }

    /// How many actions an input makes the source carry out (for the
    /// crash points between them).
    fn source_actions(&self, input: SourceInput) -> usize {
        let mut m = self.src.mem;
        let mut a = transition(&mut m, input).0;
        self.sabotage.source(self.src.mem.state(), input, &mut a);
        a.len()
    }

    fn target_actions(&self, input: TargetInput) -> usize {
        let mut m = self.tgt.mem;
        let mut a = transition(&mut m, input).0;
        self.sabotage.target(&mut a);
        a.len()
    }

    /// Carries out one action of the source; an error names a broken rule.
    fn source_act(&mut self, a: SourceAction) -> Result<(), String> {
        match a {
            Action::Record(s) => self.src.durable = Some(s),
            Action::Send(m) => self.send(Dir::ToTarget, m),
            Action::Answer => self.send(Dir::ToTarget, Msg::Status { state: self.source_status(), reply: false }),
            Action::Freeze => {
                if self.src.copy == SourceCopy::Running {
                    self.src.copy = SourceCopy::Frozen;
                }
                self.send(Dir::ToTarget, Msg::Restore);
            }
            Action::Resume => match self.src.copy {
                SourceCopy::Destroyed => return Err("the source resumed a copy it had destroyed".into()),
                _ => self.src.copy = SourceCopy::Running,
            },
            Action::Destroy => self.src.copy = SourceCopy::Destroyed,
            Action::Resolve => self.src.resolving = true,
            Action::Finish => self.src.resolving = false,
            Action::Prepare | Action::Restore | Action::Run => return Err(format!("the source was asked to {a:?}")),
        }
        Ok(())
    }

    fn target_act(&mut self, a: TargetAction) -> Result<(), String> {
        match a {
            Action::Record(s) => self.tgt.durable = Some(s),
            Action::Send(m) => self.send(Dir::ToSource, m),
            Action::Answer => self.send(Dir::ToSource, Msg::Status { state: self.target_status(), reply: false }),
            Action::Prepare => self.tgt.made = true,
            Action::Restore => {
                self.tgt.made = true;
                self.tgt.copy = TargetCopy::Partial;
                self.tgt.restoring = true;
            }
            Action::Run => match self.tgt.copy {
                TargetCopy::Complete | TargetCopy::Running => self.tgt.copy = TargetCopy::Running,
                c => return Err(format!("the target ran a copy that is {c:?}")),
            },
            Action::Destroy => {
                self.tgt.made = false;
                self.tgt.restoring = false;
                if self.tgt.copy != TargetCopy::None {
                    self.tgt.copy = TargetCopy::Destroyed;
                }
            }
            Action::Resolve => self.tgt.resolving = true,
            Action::Finish => self.tgt.resolving = false,
            Action::Freeze | Action::Resume => return Err(format!("the target was asked to {a:?}")),
        }
        Ok(())
    }

    fn crash_source(&mut self) {
        self.src.up = false;
        self.src.resolving = false;
        self.src.mem = match self.src.durable {
            Some(s) => Source::at(s),
            None => Source::new(),
        };
    }

    fn crash_target(&mut self) {
        self.tgt.up = false;
        self.tgt.resolving = false;
        self.tgt.restoring = false;
        self.tgt.mem = match self.tgt.durable {
            Some(s) => Target::at(s),
            None => Target::new(),
        };
        // The restore traced its puppets with PTRACE_O_EXITKILL.
        if self.tgt.copy == TargetCopy::Partial {
            self.tgt.copy = TargetCopy::Destroyed;
        }
    }

    /// A broken invariant in this state, if any.
    fn invariant(&self) -> Option<String> {
        if self.src.copy == SourceCopy::Running && self.tgt.copy == TargetCopy::Running {
            return Some("two running copies".into());
        }
        if self.src.copy == SourceCopy::Destroyed && self.tgt.durable != Some(TargetState::Running) {
            return Some(format!("the source destroyed its copy while the target's record says {:?}", self.tgt.durable));
        }
        if self.tgt.copy == TargetCopy::Destroyed && self.src.copy == SourceCopy::Destroyed {
            return Some("no copy left".into());
        }
        if self.tgt.copy == TargetCopy::Running && self.src.durable.and_then(SourceState::decided) != Some(Decision::Go) {
            return Some(format!("the target runs while the source's record says {:?}", self.src.durable));
        }
        None
    }

    /// Exactly one copy runs, the other side holds nothing, both records
    /// are final (or were never made), nothing is left to do or in flight.
    fn settled(&self) -> bool {
        let quiet = self.src.up && self.tgt.up && self.net.is_empty() && !self.tgt.restoring;
        let moved = self.src.durable == Some(SourceState::Completed)
            && self.src.copy == SourceCopy::Destroyed
            && self.tgt.durable == Some(TargetState::Running)
            && self.tgt.copy == TargetCopy::Running;
        let stayed = matches!(self.src.durable, Some(SourceState::RolledBack) | None)
            && self.src.copy == SourceCopy::Running
            && matches!(self.tgt.durable, Some(TargetState::RolledBack) | None)
            && matches!(self.tgt.copy, TargetCopy::None | TargetCopy::Destroyed)
            && !self.tgt.made;
        quiet && (moved || stayed)
    }

    fn steps(&self, b: &Bounds) -> Vec<Step> {
        let mut out = Vec::new();
        let mut push = |label: String, fault: bool, f: &dyn Fn(&mut World) -> Result<(), String>| {
            let mut next = self.clone();
            let violation = f(&mut next).err().or_else(|| next.invariant());
            out.push(Step { label, fault, next, violation });
        };
        // Each input of a side, carried out whole, or with the agent
        // crashing before any one of its actions.
        let crashes = self.crashes_left > 0;
        let mut source = |label: String, w: &World, input: SourceInput, prep: &dyn Fn(&mut World)| {
            let n = w.source_actions(input);
            push(label.clone(), false, &|w: &mut World| {
                prep(w);
                w.source_input(input, None)
            });
            for k in (0..n).filter(|_| crashes) {
                push(format!("{label}, crash before action {k}"), true, &|w: &mut World| {
                    w.crashes_left -= 1;
                    prep(w);
                    w.source_input(input, Some(k))
                });
            }
        };
        if self.src.up {
            let st = self.src.mem.state();
            if !self.src.begun {
                source("source begins".into(), self, SourceInput::Begin, &|w: &mut World| w.src.begun = true);
            }
            if let SourceState::PreCopy { round } = st {
                source(format!("source sent round {round}"), self, SourceInput::RoundSent(round), &|_| {});
                if round < b.rounds {
                    source("source goes on to another round".into(), self, SourceInput::NextRound, &|_| {});
                }
                source("source switches over".into(), self, SourceInput::Switchover, &|_| {});
            }
            if self.src.durable.is_some() && !st.is_final() {
                for f in [Failure::PeerLost, Failure::Stopped] {
                    source(format!("source fails ({f:?})"), self, SourceInput::Fail(f), &|_| {});
                }
            }
            for (&(dir, m), _) in self.net.iter().filter(|((d, _), _)| *d == Dir::ToSource) {
                source(format!("source receives {m:?}"), self, SourceInput::Message(m), &move |w: &mut World| w.take((dir, m)));
            }
        } else if self.src.durable.is_some() {
            source("source's agent restarts".into(), self, SourceInput::Restart, &|w: &mut World| w.src.up = true);
        } else {
            let mut w = self.clone();
            w.src.up = true;
            out.push(Step { label: "source's agent restarts".into(), fault: false, next: w, violation: None });
        }
        let mut push = |label: String, fault: bool, f: &dyn Fn(&mut World) -> Result<(), String>| {
            let mut next = self.clone();
            let violation = f(&mut next).err().or_else(|| next.invariant());
            out.push(Step { label, fault, next, violation });
        };
        let mut target = |label: String, w: &World, input: TargetInput, prep: &dyn Fn(&mut World)| {
            let n = w.target_actions(input);
            push(label.clone(), false, &|w: &mut World| {
                prep(w);
                w.target_input(input, None)
            });
            for k in (0..n).filter(|_| crashes) {
                push(format!("{label}, crash before action {k}"), true, &|w: &mut World| {
                    w.crashes_left -= 1;
                    prep(w);
                    w.target_input(input, Some(k))
                });
            }
        };
        if self.tgt.up {
            if self.tgt.restoring && self.tgt.copy == TargetCopy::Partial {
                target("target's restore completes".into(), self, TargetInput::RestoreDone, &|w: &mut World| {
                    w.tgt.restoring = false;
                    w.tgt.copy = TargetCopy::Complete;
                });
            }
            if self.tgt.mem.state().is_some_and(|s| !s.is_final()) {
                target("target fails".into(), self, TargetInput::Fail(Failure::PeerLost), &|_| {});
            }
            for (&(dir, m), _) in self.net.iter().filter(|((d, _), _)| *d == Dir::ToTarget) {
                target(format!("target receives {m:?}"), self, TargetInput::Message(m), &move |w: &mut World| w.take((dir, m)));
            }
        } else if self.tgt.durable.is_some() {
            target("target's agent restarts".into(), self, TargetInput::Restart, &|w: &mut World| w.tgt.up = true);
        } else {
            let mut w = self.clone();
            w.tgt.up = true;
            out.push(Step { label: "target's agent restarts".into(), fault: false, next: w, violation: None });
        }
        let mut push = |label: String, fault: bool, f: &dyn Fn(&mut World) -> Result<(), String>| {
            let mut next = self.clone();
            let violation = f(&mut next).err().or_else(|| next.invariant());
            out.push(Step { label, fault, next, violation });
        };
        // The network loses or duplicates any message in flight; one sent
        // to an agent that is down is lost.
        for (&(dir, m), &n) in &self.net {
            let down = match dir {
                Dir::ToTarget => !self.tgt.up,
                Dir::ToSource => !self.src.up,
            };
            push(format!("lose {m:?} {dir:?}"), !down, &move |w: &mut World| {
                w.take((dir, m));
                Ok(())
            });
            if n == 1 && self.dups_left > 0 {
                push(format!("duplicate {m:?} {dir:?}"), true, &move |w: &mut World| {
                    w.dups_left -= 1;
                    w.net.insert((dir, m), 2);
                    Ok(())
                });
            }
        }
        // The resolvers ask (their questions carry the recorded state);
        // an idle agent may crash.
        if self.src.up && self.src.resolving {
            push("source asks the target".into(), false, &|w: &mut World| {
                let state = w.source_status();
                w.send(Dir::ToTarget, Msg::Status { state, reply: true });
                Ok(())
            });
        }
        if self.tgt.up && self.tgt.resolving {
            push("target asks the source".into(), false, &|w: &mut World| {
                let state = w.target_status();
                w.send(Dir::ToSource, Msg::Status { state, reply: true });
                Ok(())
            });
        }
        if crashes && self.src.up {
            push("source's agent crashes".into(), true, &|w: &mut World| {
                w.crashes_left -= 1;
                w.crash_source();
                Ok(())
            });
        }
        if crashes && self.tgt.up {
            push("target's agent crashes".into(), true, &|w: &mut World| {
                w.crashes_left -= 1;
                w.crash_target();
                Ok(())
            });
        }
        out
    }
}

/// A deliberate flaw, for the check that the model catches one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sabotage {
    /// The protocol as written.
    None,
    /// The source destroys its frozen copy when it loses the target after
    /// go (what lpm did before the protocol was a machine).
    SourceDestroysOnTimeout,
    /// The source sends go before it records it.
    GoBeforeRecord,
    /// Not a flaw, and the check must pass with it: the target's agent
    /// starts writing a record and the action after it (its restore, or
    /// letting its copy run) together, so that action may be done before
    /// the record is. The machine's own order covers the record done
    /// first; this one, the action done first.
    TargetActsFirst,
}

impl Sabotage {
    fn target(self, actions: &mut [TargetAction]) {
        if self == Sabotage::TargetActsFirst {
            for i in 1..actions.len() {
                if matches!((actions[i - 1], actions[i]), (Action::Record(_), Action::Run | Action::Restore)) {
                    actions.swap(i - 1, i);
                }
            }
        }
    }

    fn source(self, state: SourceState, input: SourceInput, actions: &mut Vec<SourceAction>) {
        match self {
            Sabotage::None | Sabotage::TargetActsFirst => {}
            Sabotage::SourceDestroysOnTimeout => {
                if state == SourceState::HandingOver && matches!(input, SourceInput::Fail(_) | SourceInput::Restart) {
                    *actions = vec![Action::Destroy, Action::Finish];
                }
            }
            Sabotage::GoBeforeRecord => {
                if let [Action::Record(SourceState::HandingOver), Action::Send(m)] = actions[..] {
                    *actions = vec![Action::Send(m), Action::Record(SourceState::HandingOver)];
                }
            }
        }
    }
}

/// Explores every reachable state within `bounds`; see the module doc for
/// what is checked.
pub fn explore(bounds: Bounds) -> Outcome {
    explore_sabotaged(bounds, Sabotage::None)
}

/// [`explore`] with a flaw built into the source's machine: the check that
/// the model finds one.
pub fn explore_sabotaged(bounds: Bounds, sabotage: Sabotage) -> Outcome {
    let mut start = World::initial();
    start.crashes_left = bounds.crashes;
    start.dups_left = bounds.duplicates;
    start.sabotage = sabotage;
    // Each state is kept once, as a key; the queue holds the ones not yet
    // explored. How each was first reached (its parent and the step's
    // number there) rebuilds a trace by replaying the steps.
    let mut index: HashMap<World, u32> = HashMap::new();
    let mut parent: Vec<(u32, u16)> = Vec::new();
    let mut settled: Vec<bool> = Vec::new();
    // Fault-free edges, reversed, for the settling check.
    let mut back: Vec<Vec<u32>> = Vec::new();
    let mut out = Outcome { states: 0, transitions: 0, settled: 0, violations: Vec::new(), stuck: Vec::new() };
    index.insert(start.clone(), 0);
    parent.push((u32::MAX, 0));
    settled.push(start.settled());
    back.push(Vec::new());
    let mut queue = VecDeque::from([(0u32, start.clone())]);
    while let Some((i, w)) = queue.pop_front() {
        for (n, s) in w.steps(&bounds).into_iter().enumerate() {
            out.transitions += 1;
            if let Some(v) = s.violation {
                if out.violations.len() < 5 {
                    out.violations.push(format!("{v}, after:\n{}\n  -> {}", trace(&start, &bounds, &parent, i), s.label));
                }
            }
            let j = match index.get(&s.next) {
                Some(&j) => j,
                None => {
                    let j = parent.len() as u32;
                    index.insert(s.next.clone(), j);
                    parent.push((i, n as u16));
                    settled.push(s.next.settled());
                    back.push(Vec::new());
                    queue.push_back((j, s.next));
                    j
                }
            };
            if !s.fault {
                back[j as usize].push(i);
            }
        }
    }
    drop(index);
    out.states = parent.len();
    // Which states can reach a settled one without further faults.
    let mut can_settle = settled.clone();
    let mut queue: VecDeque<u32> = (0..parent.len() as u32).filter(|&k| settled[k as usize]).collect();
    out.settled = queue.len();
    while let Some(j) = queue.pop_front() {
        for &i in &back[j as usize] {
            if !can_settle[i as usize] {
                can_settle[i as usize] = true;
                queue.push_back(i);
            }
        }
    }
    for (k, ok) in can_settle.iter().enumerate() {
        if !ok && out.stuck.len() < 5 {
            out.stuck.push(format!("reached by:\n{}", trace(&start, &bounds, &parent, k as u32)));
        }
    }
    out
}

/// The steps from the start to state `i`, replayed.
fn trace(start: &World, bounds: &Bounds, parent: &[(u32, u16)], mut i: u32) -> String {
    let mut path = Vec::new();
    while parent[i as usize].0 != u32::MAX {
        path.push(parent[i as usize].1);
        i = parent[i as usize].0;
    }
    path.reverse();
    let mut w = start.clone();
    let mut lines = Vec::new();
    for n in path {
        let s = w.steps(bounds).into_iter().nth(n as usize).expect("steps replay the same");
        lines.push(format!("  {}", s.label));
        w = s.next;
    }
    lines.push(format!("  => {w:?}"));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_faults_the_migration_completes() {
        let o = explore(Bounds { crashes: 0, duplicates: 0, rounds: 1 });
        assert!(o.violations.is_empty() && o.stuck.is_empty(), "{o:#?}");
        assert!(o.settled >= 2, "both endings are reachable: {o:#?}");
    }
}
