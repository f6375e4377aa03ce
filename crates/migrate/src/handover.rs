//! The migration protocol's two state machines: the source's side and the
//! target's side of one migration, as pure transition functions.
//!
//! The agents (lpmd) host these machines; they do not decide anything of
//! the protocol themselves. Every input (a message of the peer, the end of
//! a local step, a failure, a restart of lpmd) goes through [`Source::on`]
//! or [`Target::on`], which checks it is legal in the current state,
//! moves to the next state and returns the [`Action`]s to carry out, in
//! order. The first action of every state change is [`Action::Record`]:
//! the agent writes the new state durably before it acts on it; one
//! exception, the target's `Restored`, is sent before it is recorded (see
//! [`Target::on`]). The target's agent may also start a record and the
//! action after it together when that action is [`Action::Run`] or
//! [`Action::Restore`] (both orders are model-checked:
//! [`crate::model::Sabotage::TargetActsFirst`]). The model
//! checker ([`crate::model`]) runs these very functions against lost,
//! duplicated and delayed messages and crashes at every step.
//!
//! The rules that make a migration safe (DESIGN.md, "Handover"):
//! 1. The decision is made once, by the source, and recorded before it is
//!    sent: [`SourceState::HandingOver`] (go) is entered only from
//!    [`SourceState::Frozen`] on the target's word that its copy is
//!    complete and held ([`Msg::Restored`]); every other ending of the
//!    source is [`SourceState::RolledBack`] (abort).
//! 2. A copy is destroyed only once the other side's durable record says
//!    its copy runs, or will never run: the source destroys its frozen
//!    copy on [`Msg::Running`] (sent by the target after it recorded
//!    [`TargetState::Running`]); the target destroys its copy on abort, or
//!    before it has recorded [`TargetState::Restored`]: its copy has not
//!    run, and the source, even if it decided go, still holds its frozen
//!    copy, which it runs again on the target's [`Msg::RolledBack`].
//! 3. No timeout destroys a copy: after the decision a side that loses
//!    its peer keeps its copy (frozen) and keeps asking ([`Action::Resolve`],
//!    [`Msg::Status`]) until it learns the outcome.
//! 4. The target's copy runs only on go ([`Action::Run`]); the source's
//!    copy runs again only on abort ([`Action::Resume`]), or when the
//!    target's durable record says its copy is gone.

use serde::{Deserialize, Serialize};

/// The source's side of one migration, as recorded on the source host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum SourceState {
    /// Connected; the target checks whether it can take the partition.
    Validating,
    /// The target makes the partition's namespaces, NIC and cgroup.
    Preparing,
    /// Memory is copied while the partition runs; `round` counts from 1.
    PreCopy {
        /// The round being sent.
        round: u32,
    },
    /// The partition is stopped (frozen, network locked) and its last
    /// pages and state go to the target, which restores them.
    Frozen,
    /// Decided: go. Recorded before it was sent; the frozen copy is kept
    /// until the target's record says its copy runs.
    HandingOver,
    /// The target's copy runs; the source's copy is destroyed. Final.
    Completed,
    /// Decided: abort (or the target's copy was lost before it could
    /// run). The partition runs on the source. Final.
    RolledBack,
}

/// The target's side of one migration, as recorded on the target host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum TargetState {
    /// The partition's plumbing and page store exist; pages arrive.
    Prepared,
    /// The final state arrived; the restore runs.
    Restoring,
    /// The restored copy is complete and frozen, and outlives this host's
    /// agent; it waits for the source's decision.
    Restored,
    /// Go: the copy runs here. Final.
    Running,
    /// Abort, or a failure before the copy was complete: everything this
    /// host made for the migration is removed. Final.
    RolledBack,
}

/// The source's decision, as the target learns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    /// The target's copy runs; the source destroys its own.
    Go,
    /// The source's copy runs; the target destroys its own.
    Abort,
}

/// One side's recorded state, as the other side (or a relay) sees it in a
/// [`Msg::Status`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "side", rename_all = "kebab-case")]
pub enum PeerState {
    /// The source's record.
    Source {
        /// Its state.
        state: SourceState,
    },
    /// The target's record.
    Target {
        /// Its state.
        state: TargetState,
    },
    /// The host has no record of the migration.
    Unknown,
}

/// The protocol's messages, without their payloads (the wire messages of
/// the agents map onto these one to one; pages and image files travel
/// beside them and carry no protocol state).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Msg {
    /// Source → target: can you take the partition?
    Validate,
    /// Target → source: the checks' verdict.
    Validated {
        /// Every check passed.
        ok: bool,
    },
    /// Source → target: make the partition's plumbing and a page store.
    Prepare,
    /// Target → source: ready for pages.
    Prepared,
    /// Source → target: round `n`'s pages are sent.
    RoundEnd(u32),
    /// Target → source: round `n`'s pages are stored.
    RoundDone(u32),
    /// Source → target: the partition is stopped; its state is sent;
    /// restore it and hold it.
    Restore,
    /// Target → source: the copy is complete and frozen (recorded right
    /// after it is sent).
    Restored,
    /// Source → target: the decision (recorded by the source before it
    /// was sent).
    Decision(Decision),
    /// Target → source: its record says its copy runs (the answer to go).
    Running,
    /// Target → source: its record says its copy is gone (the answer to
    /// abort, or its own giving up before its copy was complete).
    RolledBack,
    /// Either way: the sender's recorded state; `reply` asks for the
    /// receiver's own in return. Relays (`lpm migration recover`) pass
    /// one side's status to the other with `reply` false.
    Status {
        /// The sender's recorded state.
        state: PeerState,
        /// Answer with your own.
        reply: bool,
    },
}

/// Why a side gives up or loses touch, as an input ([`SourceInput::Fail`],
/// [`TargetInput::Fail`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    /// A local step failed (or the policy gave up).
    Step,
    /// The peer is gone: connection closed, timed out, or it broke the
    /// protocol.
    PeerLost,
    /// An operator asked to stop the migration.
    Stopped,
}

/// An input of the source's machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceInput {
    /// The migration was asked for: its record is made and the target
    /// asked to validate.
    Begin,
    /// A message from the target (or a relayed status).
    Message(Msg),
    /// Round `n`'s pages are sent.
    RoundSent(u32),
    /// The policy continues with another round.
    NextRound,
    /// The policy switches over: stop the partition and send its state.
    Switchover,
    /// A failure (see [`Failure`]).
    Fail(Failure),
    /// lpmd restarted and found the machine in its recorded state.
    Restart,
}

/// An input of the target's machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetInput {
    /// A message from the source (or a relayed status).
    Message(Msg),
    /// The restore finished: the copy is complete, frozen and detached
    /// from this agent (it outlives it).
    RestoreDone,
    /// A failure (see [`Failure`]).
    Fail(Failure),
    /// lpmd restarted and found the machine in its recorded state.
    Restart,
}

/// What a side does after a transition, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action<S> {
    /// Write this state durably before any later action.
    Record(S),
    /// Send a message to the peer (a failure to send is a
    /// [`Failure::PeerLost`] input, never fatal to a copy).
    Send(Msg),
    /// Source: lock the partition's network, stop it, send its last
    /// pages and state; ends by sending [`Msg::Restore`].
    Freeze,
    /// Source: give back what the stop let go of, thaw the partition,
    /// unlock its network and lift any throttle (idempotent).
    Resume,
    /// Target: make the partition's plumbing and page store.
    Prepare,
    /// Target: restore the received state and hold it, complete and
    /// frozen; reports [`TargetInput::RestoreDone`] or a failure.
    Restore,
    /// Target: let the copy run: unlock its network, finish its
    /// connections, thaw it, announce it (idempotent).
    Run,
    /// Destroy this side's copy and everything made for the migration
    /// here (idempotent).
    Destroy,
    /// The outcome needs the peer: ask it ([`Msg::Status`] with `reply`,
    /// carrying this side's recorded state) until it answers, however
    /// long that takes.
    Resolve,
    /// Answer with this side's recorded state ([`Msg::Status`], `reply`
    /// false): what is on disk, never a state not yet recorded.
    Answer,
    /// The migration is over on this side.
    Finish,
}

/// An input refused in the machine's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The source's machine refused an input.
    #[error("the source in state {state:?} refuses {input:?}")]
    Source {
        /// Its state.
        state: SourceState,
        /// The input.
        input: SourceInput,
    },
    /// The target's machine refused an input.
    #[error("the target in state {state:?} refuses {input:?}")]
    Target {
        /// Its state.
        state: Option<TargetState>,
        /// The input.
        input: TargetInput,
    },
    /// A stop asked after the decision to go was recorded.
    #[error("too late to stop: the decision to go is recorded (state {0:?})")]
    TooLate(SourceState),
}

/// Actions of the source.
pub type SourceAction = Action<SourceState>;
/// Actions of the target.
pub type TargetAction = Action<TargetState>;

impl SourceState {
    /// Every state, with round 1 standing for every round (for the docs'
    /// diagram and its test).
    pub const ALL: [SourceState; 7] = [
        SourceState::Validating,
        SourceState::Preparing,
        SourceState::PreCopy { round: 1 },
        SourceState::Frozen,
        SourceState::HandingOver,
        SourceState::Completed,
        SourceState::RolledBack,
    ];

    /// The state's name, as the diagrams and `lpm migration list` show it.
    pub fn name(self) -> &'static str {
        match self {
            SourceState::Validating => "Validating",
            SourceState::Preparing => "Preparing",
            SourceState::PreCopy { .. } => "PreCopy",
            SourceState::Frozen => "Frozen",
            SourceState::HandingOver => "HandingOver",
            SourceState::Completed => "Completed",
            SourceState::RolledBack => "RolledBack",
        }
    }

    /// Final: nothing more happens on this side.
    pub fn is_final(self) -> bool {
        matches!(self, SourceState::Completed | SourceState::RolledBack)
    }

    /// The decision is recorded (go or abort).
    pub fn decided(self) -> Option<Decision> {
        match self {
            SourceState::HandingOver | SourceState::Completed => Some(Decision::Go),
            SourceState::RolledBack => Some(Decision::Abort),
            _ => None,
        }
    }
}

impl TargetState {
    /// Every state (for the docs' diagram and its test).
    pub const ALL: [TargetState; 5] =
        [TargetState::Prepared, TargetState::Restoring, TargetState::Restored, TargetState::Running, TargetState::RolledBack];

    /// The state's name, as the diagrams and `lpm migration list` show it.
    pub fn name(self) -> &'static str {
        match self {
            TargetState::Prepared => "Prepared",
            TargetState::Restoring => "Restoring",
            TargetState::Restored => "Restored",
            TargetState::Running => "Running",
            TargetState::RolledBack => "RolledBack",
        }
    }

    /// Final: nothing more happens on this side.
    pub fn is_final(self) -> bool {
        matches!(self, TargetState::Running | TargetState::RolledBack)
    }
}

/// The source's machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Source {
    state: SourceState,
}

impl Default for Source {
    fn default() -> Self {
        Source::new()
    }
}

impl Source {
    /// A migration about to begin ([`SourceInput::Begin`]).
    pub fn new() -> Source {
        Source { state: SourceState::Validating }
    }

    /// The machine in a recorded state (after a restart, or for a relay).
    pub fn at(state: SourceState) -> Source {
        Source { state }
    }

    /// Its current state.
    pub fn state(&self) -> SourceState {
        self.state
    }

    fn to(&mut self, s: SourceState, then: &[SourceAction]) -> Vec<SourceAction> {
        self.state = s;
        let mut v = vec![Action::Record(s)];
        v.extend_from_slice(then);
        v
    }

    /// Abort: recorded, the target told (it also learns it by asking),
    /// then the partition runs here again. Told first: its copy may hold
    /// file locks the partition takes back as it resumes.
    fn abort(&mut self) -> Vec<SourceAction> {
        self.to(SourceState::RolledBack, &[Action::Send(Msg::Decision(Decision::Abort)), Action::Resume, Action::Finish])
    }

    /// The target's copy runs: the frozen copy here goes.
    fn complete(&mut self) -> Vec<SourceAction> {
        self.to(SourceState::Completed, &[Action::Destroy, Action::Finish])
    }

    /// Applies one input; returns the actions to carry out in order, or
    /// refuses it (the state is then unchanged: the caller applies
    /// [`SourceInput::Fail`] with [`Failure::PeerLost`] for a refused
    /// message of the peer).
    pub fn on(&mut self, input: SourceInput) -> Result<Vec<SourceAction>, ProtocolError> {
        use SourceInput as I;
        use SourceState as S;
        let refuse = |state| Err(ProtocolError::Source { state, input });
        let st = self.state;
        // Anyone may ask for the state, in any state.
        if let I::Message(Msg::Status { state: peer, reply }) = input {
            let mut out = self.learn(peer);
            if reply {
                out.push(Action::Answer);
            }
            return Ok(out);
        }
        Ok(match (st, input) {
            (S::Validating, I::Begin) => vec![Action::Record(S::Validating), Action::Send(Msg::Validate)],
            (S::Validating, I::Message(Msg::Validated { ok: true })) => self.to(S::Preparing, &[Action::Send(Msg::Prepare)]),
            (S::Validating, I::Message(Msg::Validated { ok: false })) => self.abort(),
            (S::Preparing, I::Message(Msg::Prepared)) => self.to(S::PreCopy { round: 1 }, &[]),
            (S::PreCopy { round }, I::RoundSent(n)) if n == round => vec![Action::Send(Msg::RoundEnd(n))],
            (S::PreCopy { round }, I::Message(Msg::RoundDone(n))) if n == round => vec![],
            (S::PreCopy { round }, I::NextRound) => self.to(S::PreCopy { round: round + 1 }, &[]),
            (S::PreCopy { .. }, I::Switchover) => self.to(S::Frozen, &[Action::Freeze]),
            // The stop's last round has a barrier of its own.
            (S::Frozen, I::RoundSent(n)) => vec![Action::Send(Msg::RoundEnd(n))],
            (S::Frozen, I::Message(Msg::RoundDone(_))) => vec![],
            (S::Frozen, I::Message(Msg::Restored)) => self.to(S::HandingOver, &[Action::Send(Msg::Decision(Decision::Go))]),
            (S::HandingOver, I::Message(Msg::Running)) => self.complete(),
            // The target's copy is gone before it ran (it had not recorded
            // it complete): the partition can only live on here.
            (S::HandingOver, I::Message(Msg::RolledBack)) => self.to(S::RolledBack, &[Action::Resume, Action::Finish]),
            (S::HandingOver, I::Fail(Failure::Stopped)) => return Err(ProtocolError::TooLate(st)),
            // Whatever failed, the decision stands: keep the frozen copy
            // and ask until the target answers.
            (S::HandingOver, I::Fail(_) | I::Restart) => vec![Action::Resolve],
            (S::Completed, I::Restart) => vec![Action::Destroy, Action::Finish],
            (S::RolledBack, I::Restart) => vec![Action::Resume, Action::Finish],
            // Before the decision every failure and every restart aborts.
            (S::Validating | S::Preparing | S::PreCopy { .. } | S::Frozen, I::Fail(_) | I::Restart) => self.abort(),
            // The target gave up before the decision: so does the source.
            (S::Validating | S::Preparing | S::PreCopy { .. } | S::Frozen, I::Message(Msg::RolledBack)) => self.abort(),
            (S::HandingOver, I::Message(Msg::Restored)) => vec![Action::Send(Msg::Decision(Decision::Go))],
            (S::Completed, I::Fail(Failure::Stopped)) => return Err(ProtocolError::TooLate(st)),
            // Late answers after the end change nothing.
            (S::Completed | S::RolledBack, I::Message(_) | I::Fail(_)) => vec![],
            _ => return refuse(st),
        })
    }

    /// What the target's recorded state means here.
    fn learn(&mut self, peer: PeerState) -> Vec<SourceAction> {
        let PeerState::Target { state: t } = peer else { return vec![] };
        match (self.state, t) {
            // The target holds a complete copy: as if `Restored` arrived.
            (SourceState::Frozen, TargetState::Restored) => self.to(SourceState::HandingOver, &[Action::Send(Msg::Decision(Decision::Go))]),
            // It still waits for the decision: tell it again.
            (SourceState::HandingOver, TargetState::Restored) => vec![Action::Send(Msg::Decision(Decision::Go))],
            (SourceState::HandingOver, TargetState::Running) => self.complete(),
            (SourceState::HandingOver, TargetState::RolledBack) => self.to(SourceState::RolledBack, &[Action::Resume, Action::Finish]),
            // The target gave up before the decision: so does the source.
            (
                SourceState::Validating | SourceState::Preparing | SourceState::PreCopy { .. } | SourceState::Frozen,
                TargetState::RolledBack,
            ) => self.abort(),
            _ => vec![],
        }
    }
}

/// The target's machine; `None` until a prepare made its record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    state: Option<TargetState>,
}

impl Target {
    /// No migration yet (the validation needs no record).
    pub fn new() -> Target {
        Target { state: None }
    }

    /// The machine in a recorded state (after a restart, or for a relay).
    pub fn at(state: TargetState) -> Target {
        Target { state: Some(state) }
    }

    /// Its current state, once prepared.
    pub fn state(&self) -> Option<TargetState> {
        self.state
    }

    fn to(&mut self, s: TargetState, then: &[TargetAction]) -> Vec<TargetAction> {
        self.state = Some(s);
        let mut v = vec![Action::Record(s)];
        v.extend_from_slice(then);
        v
    }

    fn roll_back(&mut self) -> Vec<TargetAction> {
        self.to(TargetState::RolledBack, &[Action::Destroy, Action::Send(Msg::RolledBack), Action::Finish])
    }

    fn go(&mut self) -> Vec<TargetAction> {
        self.to(TargetState::Running, &[Action::Run, Action::Send(Msg::Running), Action::Finish])
    }

    /// Applies one input; returns the actions to carry out in order, or
    /// refuses it (the state is then unchanged: the caller applies
    /// [`TargetInput::Fail`] with [`Failure::PeerLost`] for a refused
    /// message of the peer).
    pub fn on(&mut self, input: TargetInput) -> Result<Vec<TargetAction>, ProtocolError> {
        use TargetInput as I;
        use TargetState as S;
        let st = self.state;
        if let I::Message(Msg::Status { state: peer, reply }) = input {
            let mut out = self.learn(peer);
            if reply {
                out.push(Action::Answer);
            }
            return Ok(out);
        }
        Ok(match (st, input) {
            (None, I::Message(Msg::Validate)) => vec![Action::Send(Msg::Validated { ok: true })],
            (None, I::Message(Msg::Prepare)) => self.to(S::Prepared, &[Action::Prepare, Action::Send(Msg::Prepared)]),
            // A decision for a migration never prepared here.
            (None, I::Message(Msg::Decision(_))) => vec![Action::Answer],
            (None, I::Fail(_) | I::Restart) => vec![],
            (Some(S::Prepared), I::Message(Msg::RoundEnd(n))) => vec![Action::Send(Msg::RoundDone(n))],
            (Some(S::Prepared), I::Message(Msg::Restore)) => self.to(S::Restoring, &[Action::Restore]),
            // Sent before it is recorded: the source records its decision
            // meanwhile, and the target takes that decision only once its
            // record is written. Should the target lose its memory before,
            // its record says Restoring: it destroys its copy, which never
            // ran, and tells the source, whose frozen copy runs again.
            (Some(S::Restoring), I::RestoreDone) => {
                self.state = Some(S::Restored);
                vec![Action::Send(Msg::Restored), Action::Record(S::Restored)]
            }
            (Some(S::Restored), I::Message(Msg::Decision(Decision::Go))) => self.go(),
            // Before its copy is recorded complete the source cannot have
            // decided go: any failure, and any restart, rolls back.
            (Some(S::Prepared | S::Restoring), I::Fail(_) | I::Restart) => self.roll_back(),
            (Some(S::Prepared | S::Restoring | S::Restored), I::Message(Msg::Decision(Decision::Abort))) => self.roll_back(),
            // The copy is complete: only the decision ends it.
            (Some(S::Restored), I::Fail(_) | I::Restart) => vec![Action::Resolve],
            // Answers again, for a source that did not hear them.
            (Some(S::Running), I::Message(Msg::Decision(Decision::Go))) => vec![Action::Send(Msg::Running)],
            (Some(S::RolledBack), I::Message(Msg::Decision(_))) => vec![Action::Send(Msg::RolledBack)],
            (Some(S::Running), I::Restart) => vec![Action::Run, Action::Finish],
            (Some(S::RolledBack), I::Restart) => vec![Action::Destroy, Action::Finish],
            (Some(S::Running | S::RolledBack), I::Fail(_)) => vec![],
            _ => return Err(ProtocolError::Target { state: st, input }),
        })
    }

    /// What the source's recorded state means here.
    fn learn(&mut self, peer: PeerState) -> Vec<TargetAction> {
        let PeerState::Source { state: s } = peer else { return vec![] };
        match (self.state, s.decided()) {
            (Some(TargetState::Restored), Some(Decision::Go)) => self.go(),
            (Some(TargetState::Prepared | TargetState::Restoring | TargetState::Restored), Some(Decision::Abort)) => self.roll_back(),
            _ => vec![],
        }
    }
}

/// What carrying out one action led to, for [`drive`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next<I> {
    /// Carry on with the next action.
    Done,
    /// The action produced another input (a failure, the end of a step),
    /// taken once the current transition's actions are all carried out.
    Then(I),
    /// The durable record could not be written: stop here, as if the
    /// agent had died before this action (the caller puts the machine
    /// back in its recorded state).
    Halt,
}

/// One of the two machines, as [`drive`] runs it.
pub trait Machine {
    /// Its inputs.
    type Input: Copy + std::fmt::Debug;
    /// Its states.
    type State: Copy;
    /// The transition function.
    fn on(&mut self, input: Self::Input) -> Result<Vec<Action<Self::State>>, ProtocolError>;
    /// The input a refused message of the peer stands for.
    fn peer_lost() -> Self::Input;
    /// Whether the input is a message of the peer.
    fn is_message(input: &Self::Input) -> bool;
}

impl Machine for Source {
    type Input = SourceInput;
    type State = SourceState;
    fn on(&mut self, input: SourceInput) -> Result<Vec<SourceAction>, ProtocolError> {
        Source::on(self, input)
    }
    fn peer_lost() -> SourceInput {
        SourceInput::Fail(Failure::PeerLost)
    }
    fn is_message(input: &SourceInput) -> bool {
        matches!(input, SourceInput::Message(_))
    }
}

impl Machine for Target {
    type Input = TargetInput;
    type State = TargetState;
    fn on(&mut self, input: TargetInput) -> Result<Vec<TargetAction>, ProtocolError> {
        Target::on(self, input)
    }
    fn peer_lost() -> TargetInput {
        TargetInput::Fail(Failure::PeerLost)
    }
    fn is_message(input: &TargetInput) -> bool {
        matches!(input, TargetInput::Message(_))
    }
}

/// One transition as the agents take it: the machine's actions for
/// `input`; a message of the peer the machine refuses counts as losing
/// the peer (the machine says what that means in its state), any other
/// refused input is dropped. The refusal, if any, comes back beside.
pub fn transition<M: Machine>(m: &mut M, input: M::Input) -> (Vec<Action<M::State>>, Option<ProtocolError>) {
    match m.on(input) {
        Ok(a) => (a, None),
        Err(e) if M::is_message(&input) => (m.on(M::peer_lost()).unwrap_or_default(), Some(e)),
        Err(e) => (Vec::new(), Some(e)),
    }
}

/// Runs a machine the way an agent must: takes `input`, carries out the
/// transition's actions in order with `act` (which owns whatever they
/// need, reached through `ctx`), then the inputs they led to, until none
/// is left. A message of the peer the machine refuses counts as losing
/// the peer (the machine says what that means in its state); any other
/// refused input is reported through `refused` and dropped. Returns false
/// when an action halted: the caller puts the machine back in its
/// recorded state, as a restarted agent would find it.
pub fn drive<C, M: Machine>(
    ctx: &mut C,
    machine: fn(&mut C) -> &mut M,
    input: M::Input,
    mut act: impl FnMut(&mut C, Action<M::State>) -> Next<M::Input>,
    mut refused: impl FnMut(ProtocolError),
) -> bool {
    let mut queue = std::collections::VecDeque::from([input]);
    while let Some(input) = queue.pop_front() {
        let (actions, refusal) = transition(machine(ctx), input);
        if let Some(e) = refusal {
            refused(e);
        }
        for a in actions {
            match act(ctx, a) {
                Next::Done => {}
                Next::Then(i) => queue.push_back(i),
                Next::Halt => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use Action::*;

    type Out<A> = Result<Vec<A>, ProtocolError>;

    fn src(state: SourceState, input: SourceInput) -> (SourceState, Result<Vec<SourceAction>, ProtocolError>) {
        let mut m = Source::at(state);
        let r = m.on(input);
        (m.state(), r)
    }

    fn tgt(state: Option<TargetState>, input: TargetInput) -> (Option<TargetState>, Result<Vec<TargetAction>, ProtocolError>) {
        let mut m = Target { state };
        let r = m.on(input);
        (m.state(), r)
    }

    #[test]
    fn source_transitions() {
        use SourceInput as I;
        use SourceState as S;
        let abort = || Ok(vec![Record(S::RolledBack), Send(Msg::Decision(Decision::Abort)), Resume, Finish]);
        let cases: Vec<(S, I, S, Out<SourceAction>)> = vec![
            (S::Validating, I::Begin, S::Validating, Ok(vec![Record(S::Validating), Send(Msg::Validate)])),
            (S::Validating, I::Message(Msg::Validated { ok: true }), S::Preparing, Ok(vec![Record(S::Preparing), Send(Msg::Prepare)])),
            (S::Validating, I::Message(Msg::Validated { ok: false }), S::RolledBack, abort()),
            (S::Preparing, I::Message(Msg::Prepared), S::PreCopy { round: 1 }, Ok(vec![Record(S::PreCopy { round: 1 })])),
            (S::PreCopy { round: 2 }, I::RoundSent(2), S::PreCopy { round: 2 }, Ok(vec![Send(Msg::RoundEnd(2))])),
            (S::PreCopy { round: 2 }, I::NextRound, S::PreCopy { round: 3 }, Ok(vec![Record(S::PreCopy { round: 3 })])),
            (S::PreCopy { round: 2 }, I::Switchover, S::Frozen, Ok(vec![Record(S::Frozen), Freeze])),
            (S::PreCopy { round: 2 }, I::Fail(Failure::Stopped), S::RolledBack, abort()),
            (S::Frozen, I::Message(Msg::Restored), S::HandingOver, Ok(vec![Record(S::HandingOver), Send(Msg::Decision(Decision::Go))])),
            (S::Frozen, I::Fail(Failure::PeerLost), S::RolledBack, abort()),
            (S::Frozen, I::Restart, S::RolledBack, abort()),
            (S::HandingOver, I::Message(Msg::Running), S::Completed, Ok(vec![Record(S::Completed), Destroy, Finish])),
            (S::HandingOver, I::Fail(Failure::PeerLost), S::HandingOver, Ok(vec![Resolve])),
            (S::HandingOver, I::Restart, S::HandingOver, Ok(vec![Resolve])),
            (S::HandingOver, I::Fail(Failure::Stopped), S::HandingOver, Err(ProtocolError::TooLate(S::HandingOver))),
            (S::HandingOver, I::Message(Msg::RolledBack), S::RolledBack, Ok(vec![Record(S::RolledBack), Resume, Finish])),
            (S::Completed, I::Restart, S::Completed, Ok(vec![Destroy, Finish])),
            (S::RolledBack, I::Restart, S::RolledBack, Ok(vec![Resume, Finish])),
            (
                S::HandingOver,
                I::Message(Msg::Status { state: PeerState::Target { state: TargetState::Running }, reply: true }),
                S::Completed,
                Ok(vec![Record(S::Completed), Destroy, Finish, Answer]),
            ),
            (
                S::HandingOver,
                I::Message(Msg::Status { state: PeerState::Target { state: TargetState::Restored }, reply: false }),
                S::HandingOver,
                Ok(vec![Send(Msg::Decision(Decision::Go))]),
            ),
            (S::HandingOver, I::Message(Msg::Status { state: PeerState::Unknown, reply: false }), S::HandingOver, Ok(vec![])),
            (
                S::Preparing,
                I::Message(Msg::Restored),
                S::Preparing,
                Err(ProtocolError::Source { state: S::Preparing, input: I::Message(Msg::Restored) }),
            ),
            (
                S::PreCopy { round: 1 },
                I::Message(Msg::Running),
                S::PreCopy { round: 1 },
                Err(ProtocolError::Source { state: S::PreCopy { round: 1 }, input: I::Message(Msg::Running) }),
            ),
        ];
        for (from, input, to, want) in cases {
            let (got_state, got) = src(from, input);
            assert_eq!((got_state, &got), (to, &want), "{from:?} + {input:?}");
        }
    }

    #[test]
    fn target_transitions() {
        use TargetInput as I;
        use TargetState as S;
        let back = || Ok(vec![Record(S::RolledBack), Destroy, Send(Msg::RolledBack), Finish]);
        let go = || Ok(vec![Record(S::Running), Run, Send(Msg::Running), Finish]);
        type Case = (Option<S>, I, Option<S>, Out<TargetAction>);
        let cases: Vec<Case> = vec![
            (None, I::Message(Msg::Validate), None, Ok(vec![Send(Msg::Validated { ok: true })])),
            (None, I::Message(Msg::Prepare), Some(S::Prepared), Ok(vec![Record(S::Prepared), Prepare, Send(Msg::Prepared)])),
            (Some(S::Prepared), I::Message(Msg::RoundEnd(4)), Some(S::Prepared), Ok(vec![Send(Msg::RoundDone(4))])),
            (Some(S::Prepared), I::Message(Msg::Restore), Some(S::Restoring), Ok(vec![Record(S::Restoring), Restore])),
            (Some(S::Prepared), I::Fail(Failure::PeerLost), Some(S::RolledBack), back()),
            (Some(S::Restoring), I::RestoreDone, Some(S::Restored), Ok(vec![Send(Msg::Restored), Record(S::Restored)])),
            (Some(S::Restoring), I::Restart, Some(S::RolledBack), back()),
            (Some(S::Restored), I::Message(Msg::Decision(Decision::Go)), Some(S::Running), go()),
            (Some(S::Restored), I::Message(Msg::Decision(Decision::Abort)), Some(S::RolledBack), back()),
            (Some(S::Restored), I::Fail(Failure::PeerLost), Some(S::Restored), Ok(vec![Resolve])),
            (Some(S::Restored), I::Restart, Some(S::Restored), Ok(vec![Resolve])),
            (
                Some(S::Restored),
                I::Message(Msg::Status { state: PeerState::Source { state: SourceState::HandingOver }, reply: false }),
                Some(S::Running),
                go(),
            ),
            (
                Some(S::Restored),
                I::Message(Msg::Status { state: PeerState::Source { state: SourceState::Frozen }, reply: true }),
                Some(S::Restored),
                Ok(vec![Answer]),
            ),
            (Some(S::Running), I::Message(Msg::Decision(Decision::Go)), Some(S::Running), Ok(vec![Send(Msg::Running)])),
            (Some(S::Running), I::Restart, Some(S::Running), Ok(vec![Run, Finish])),
            (Some(S::RolledBack), I::Message(Msg::Decision(Decision::Go)), Some(S::RolledBack), Ok(vec![Send(Msg::RolledBack)])),
            (
                Some(S::Prepared),
                I::Message(Msg::Decision(Decision::Go)),
                Some(S::Prepared),
                Err(ProtocolError::Target { state: Some(S::Prepared), input: I::Message(Msg::Decision(Decision::Go)) }),
            ),
            (
                Some(S::Running),
                I::Message(Msg::Decision(Decision::Abort)),
                Some(S::Running),
                Err(ProtocolError::Target { state: Some(S::Running), input: I::Message(Msg::Decision(Decision::Abort)) }),
            ),
        ];
        for (from, input, to, want) in cases {
            let (got_state, got) = tgt(from, input);
            assert_eq!((got_state, &got), (to, &want), "{from:?} + {input:?}");
        }
    }

    #[test]
    fn records_name_their_state() {
        let j = serde_json::to_string(&SourceState::PreCopy { round: 3 }).unwrap();
        assert_eq!(j, r#"{"state":"pre-copy","round":3}"#);
        assert_eq!(serde_json::from_str::<SourceState>(&j).unwrap(), SourceState::PreCopy { round: 3 });
        assert_eq!(serde_json::to_string(&TargetState::Restored).unwrap(), r#"{"state":"restored"}"#);
    }
}
