//! The convergence policy of pre-copy: after each round, one pure function
//! of what was measured decides whether to copy another round, slow the
//! partition down, stop it and switch over, or give up.
//!
//! The model is QEMU's auto-converge:
//!
//! - Switch over as soon as the stop fits the allowed downtime: the pages
//!   left dirty, sent at the measured bandwidth, plus the fixed cost of
//!   everything else the stop does (non-memory state, restore, handover).
//! - A round "runs hot" when the partition dirtied more than half of what
//!   the round transferred (QEMU: `bytes_dirty_period > bytes_xfer_period *
//!   throttle-trigger-threshold`, 50 % by default). Pages dirtied during
//!   round k are what is left after it, and what round k sent is what was
//!   left after round k-1, so with the history of remaining counts that is
//!   `remaining[k] > remaining[k-1] / 2`: the remaining set did not at
//!   least halve.
//! - Two hot rounds in a row at the current throttle raise the throttle
//!   (QEMU counts `dirty_rate_high_cnt` to 2 and resets it on every
//!   increment, so a new throttle gets two rounds to show its effect). The
//!   first step is `throttle_initial` (QEMU's cpu-throttle-initial, 20 %),
//!   each later one adds `throttle_step` (cpu-throttle-increment, 10 % in
//!   QEMU; we default to 20 points because our rounds are few and long),
//!   capped at `throttle_max` (QEMU's 99 %).
//! - A partition dirtying memory at least as fast as the link carries it
//!   cannot converge at all: that raises the throttle after one round at
//!   the current level instead of two.
//! - At the round or time limit: switch over anyway when the user asked for
//!   it (`force_switch`, accepting a longer downtime), else abort, naming
//!   the limit. Aborting costs nothing: the partition never stopped.
//!
//! The function keeps no state: the caller passes the history and how long
//! ago the throttle last changed, so every decision can be replayed from a
//! table (see the tests).

use std::fmt;
use std::time::Duration;

use crate::report::StopPhase;

/// Bytes in a page.
const PAGE: f64 = 4096.0;

/// What the source measured after a round.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measure {
    /// Rounds completed so far (1 after the first full copy).
    pub round: u32,
    /// Pages dirty now: what the next round (or the stop) must send.
    pub remaining: u64,
    /// Pages the last round sent.
    pub sent_last: u64,
    /// Pages dirtied per second during the last round.
    pub dirty_rate: f64,
    /// Bytes per second the link carried during the last round.
    pub bandwidth: f64,
    /// Time since pre-copy started.
    pub elapsed: Duration,
    /// Fraction of the partition's CPU time taken away now (0.0..=0.99).
    pub throttle: f64,
    /// Rounds completed since the throttle last changed (or since the
    /// start when it never did).
    pub rounds_at_throttle: u32,
    /// Remaining pages after each round, oldest first; the last entry is
    /// `remaining`.
    pub history: Vec<u64>,
    /// Of `remaining`, the pages of areas no dirty tracker follows
    /// (droppable ones): in every round and in the stop, however long
    /// pre-copy goes on.
    pub untracked: u64,
}

/// What the operator allows.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// Longest the partition may be stopped.
    pub max_downtime: Duration,
    /// Longest pre-copy may run before the limit applies.
    pub max_total: Duration,
    /// Most rounds before the limit applies: a safety net, the time limit
    /// is the one that governs (a small partition under load may need
    /// dozens of short rounds while auto-converge throttles it).
    pub max_rounds: u32,
    /// Switch over at the limit (or with a fixed cost above the downtime)
    /// even though the downtime will be longer than allowed.
    pub force_switch: bool,
    /// First throttle applied.
    pub throttle_initial: f64,
    /// Added to the throttle at each further step.
    pub throttle_step: f64,
    /// Highest throttle.
    pub throttle_max: f64,
    /// What the stop costs besides sending the remaining pages (freezing,
    /// non-memory state, restore, handover), estimated by the caller.
    pub fixed_cost: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_downtime: Duration::from_millis(50),
            max_total: Duration::from_secs(120),
            max_rounds: 1000,
            force_switch: false,
            throttle_initial: 0.20,
            throttle_step: 0.20,
            throttle_max: 0.99,
            fixed_cost: Duration::ZERO,
        }
    }
}

/// Why pre-copy gives up.
#[derive(Clone, Debug, PartialEq)]
pub enum AbortReason {
    /// The round limit was reached without converging.
    RoundLimit {
        /// Rounds done.
        rounds: u32,
        /// The limit.
        limit: u32,
    },
    /// The time limit was reached without converging.
    TimeLimit {
        /// Time spent.
        elapsed: Duration,
        /// The limit.
        limit: Duration,
    },
    /// The stop costs more than the allowed downtime even with no page
    /// left to send.
    DowntimeUnreachable {
        /// The fixed cost of the stop.
        fixed_cost: Duration,
        /// The allowed downtime.
        max_downtime: Duration,
    },
}

impl fmt::Display for AbortReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AbortReason::RoundLimit { rounds, limit } => {
                write!(f, "pre-copy did not converge within the round limit ({rounds} of {limit} rounds)")
            }
            AbortReason::TimeLimit { elapsed, limit } => write!(
                f,
                "pre-copy did not converge within the time limit ({:.1} s of {:.1} s)",
                elapsed.as_secs_f64(),
                limit.as_secs_f64()
            ),
            AbortReason::DowntimeUnreachable { fixed_cost, max_downtime } => write!(
                f,
                "the stop alone takes {:.1} ms, more than the allowed downtime of {:.1} ms",
                fixed_cost.as_secs_f64() * 1e3,
                max_downtime.as_secs_f64() * 1e3
            ),
        }
    }
}

/// What to do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Copy another round.
    Continue,
    /// Set the partition's throttle to this fraction, then copy another
    /// round.
    Throttle(f64),
    /// Stop the partition and send the rest.
    Switchover,
    /// Give up; the partition keeps running where it is.
    Abort(AbortReason),
}

/// How long sending `pages` takes at `bandwidth` bytes per second
/// (infinite when there is something to send and no bandwidth measured).
pub fn transfer_time(pages: u64, bandwidth: f64) -> f64 {
    if pages == 0 {
        0.0
    } else if bandwidth > 0.0 && bandwidth.is_finite() {
        pages as f64 * PAGE / bandwidth
    } else {
        f64::INFINITY
    }
}

/// The expected downtime if the partition stopped now, in seconds.
pub fn expected_downtime(m: &Measure, l: &Limits) -> f64 {
    transfer_time(m.remaining, m.bandwidth) + l.fixed_cost.as_secs_f64()
}

/// Whether a round dirtied more than half of what it sent (QEMU's trigger).
fn hot(dirtied: u64, sent: u64) -> bool {
    dirtied * 2 > sent
}

/// The next throttle after `current`, or None at the ceiling.
fn next_throttle(current: f64, l: &Limits) -> Option<f64> {
    if current >= l.throttle_max {
        return None;
    }
    let next = if current <= 0.0 { l.throttle_initial } else { current + l.throttle_step };
    // Whole percentage points: no 0.6000000000000001 in reports.
    Some(((next * 100.0).round() / 100.0).min(l.throttle_max))
}

/// Decides what follows the round just measured.
pub fn decide(m: &Measure, l: &Limits) -> Decision {
    let max_down = l.max_downtime.as_secs_f64();
    if l.fixed_cost > l.max_downtime && !l.force_switch {
        return Decision::Abort(AbortReason::DowntimeUnreachable { fixed_cost: l.fixed_cost, max_downtime: l.max_downtime });
    }
    // With force_switch the user accepted the fixed cost's overrun: switch
    // once the pages alone fit.
    let memory_budget = if l.fixed_cost > l.max_downtime { max_down } else { max_down - l.fixed_cost.as_secs_f64() };
    // Untracked pages are sent again in every round: waiting cannot take
    // them off the stop, so only the rest must fit (a droppable area of
    // eight pages, priced at a loaded host's learned cost per page, never
    // fit, and the round limit aborted the migration). A stop they make
    // too long is reported over budget.
    if transfer_time(m.remaining.saturating_sub(m.untracked), m.bandwidth) <= memory_budget {
        return Decision::Switchover;
    }
    let limit = if m.round >= l.max_rounds {
        Some(AbortReason::RoundLimit { rounds: m.round, limit: l.max_rounds })
    } else if m.elapsed >= l.max_total {
        Some(AbortReason::TimeLimit { elapsed: m.elapsed, limit: l.max_total })
    } else {
        None
    };
    if let Some(reason) = limit {
        return if l.force_switch { Decision::Switchover } else { Decision::Abort(reason) };
    }
    // Without a bandwidth measured (nothing sent) there is nothing to
    // compare the dirty rate with.
    let outrun = m.bandwidth > 0.0 && m.dirty_rate * PAGE >= m.bandwidth && m.rounds_at_throttle >= 1;
    let h = &m.history;
    // The last round's figures are exact; the one before is judged from
    // the history (it sent what the round before it left). Round 1 sent
    // everything, so it never counts as hot.
    let stalled = m.rounds_at_throttle >= 2 && h.len() >= 3 && hot(m.remaining, m.sent_last) && hot(h[h.len() - 2], h[h.len() - 3]);
    if outrun || stalled {
        if let Some(t) = next_throttle(m.throttle, l) {
            return Decision::Throttle(t);
        }
    }
    Decision::Continue
}

/// How much slower the stop moves a page than a round does, until the
/// host measured its stops: the last round reads pages scattered one by
/// one, and the restore copies them into memory the target must allocate
/// afresh (on this VM memory the host took back costs 1 to 3 ms per MiB to
/// touch again).
pub const STOP_SLOWDOWN: f64 = 6.0;

/// A stop with fewer pages than this measures the fixed cost; one with
/// more, the cost per page.
pub const STOP_FEW_PAGES: u64 = 256;

/// The stop's fixed cost before the host measured one, in ms.
pub const STOP_FIXED_GUESS_MS: f64 = 25.0;

/// The share of the allowed downtime the fixed cost may take at most: an
/// estimate too high must not refuse a migration, nor leave no room for
/// pages.
pub const STOP_FIXED_SHARE: f64 = 0.6;

/// What a stop of this host costs, learned from its last ones (moving
/// averages): downtime = fixed + pages x per page. The policy's model of
/// the next stop ([`StopCost::fixed`], [`StopCost::stop_rate`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StopCost {
    /// What a stop with next to no pages cost, ms.
    pub fixed_ms: Option<f64>,
    /// What each page beyond cost, ms: read in the last round while the
    /// partition is stopped, stored, and filled into the restored memory.
    pub ms_per_page: Option<f64>,
}

/// One stop, as the model learns from it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StopSample {
    /// From frozen on the source to running on the target, ms.
    pub downtime_ms: f64,
    /// Pages sent in the stop.
    pub pages: u64,
    /// Of the downtime, reading, sending and storing those pages, ms.
    pub pages_ms: f64,
    /// When the stop went over the allowed downtime: the phase that took
    /// most of it.
    pub over: Option<StopPhase>,
}

impl StopCost {
    /// Takes in one stop. A stop with few pages measures the fixed cost,
    /// one with many the cost per page beyond it; but one with many pages
    /// that went over the budget in a phase pages do not drive (freeze,
    /// state image, restore, handover) measures the fixed cost: its
    /// downtime without the time its pages took.
    ///
    /// A stop within the budget is averaged with the ones before; a stop
    /// over it counts at once where it measured more than the average (an
    /// average would halve the overrun, and the next stop of the same
    /// partition, decided on the old figure, would overrun again).
    pub fn learn(&mut self, s: &StopSample) {
        self.learn_with(s, true)
    }

    /// [`StopCost::learn`], with an overrun counted at once or averaged.
    fn learn_with(&mut self, s: &StopSample, at_once: bool) {
        let over = at_once && s.over.is_some();
        let fold = |old: Option<f64>, new: f64| {
            Some(match old {
                None => new,
                Some(o) if over && new > o => new,
                Some(o) => (o + new) / 2.0,
            })
        };
        let fixed_phase = s.over.is_some_and(|p| p != StopPhase::LastPages);
        if s.pages < STOP_FEW_PAGES {
            self.fixed_ms = fold(self.fixed_ms, s.downtime_ms);
        } else if fixed_phase {
            self.fixed_ms = fold(self.fixed_ms, (s.downtime_ms - s.pages_ms).max(0.0));
        } else {
            let beyond = (s.downtime_ms - self.fixed_ms.unwrap_or(STOP_FIXED_GUESS_MS)).max(0.0);
            self.ms_per_page = fold(self.ms_per_page, beyond / s.pages as f64);
        }
    }

    /// The fixed cost the policy counts, within a downtime of
    /// `max_downtime`.
    pub fn fixed(&self, max_downtime: Duration) -> Duration {
        let fixed = self.fixed_ms.unwrap_or(STOP_FIXED_GUESS_MS);
        Duration::from_secs_f64(fixed / 1e3).min(max_downtime.mul_f64(STOP_FIXED_SHARE))
    }

    /// The rate (bytes/s) at which the stop moves pages, when the rounds
    /// moved them at `round_rate`: as measured in this host's stops,
    /// never faster than [`STOP_SLOWDOWN`] below the rounds.
    pub fn stop_rate(&self, round_rate: f64) -> f64 {
        let r = round_rate / STOP_SLOWDOWN;
        match self.ms_per_page.filter(|&c| c > 0.0) {
            Some(per) => r.min(PAGE / (per / 1e3)),
            None => r,
        }
    }
}

/// The stop costs a host learned: its own model, from every stop it made,
/// and one per partition it moved, from that partition's stops only. A
/// partition's stop depends on what it holds (processes, threads,
/// sockets, files: the freeze, the state image, the restore), so its own
/// figures predict its next stop better than other partitions' do; the
/// host's model stands in for a partition never moved from this host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StopCosts {
    /// Learned from every stop.
    pub host: StopCost,
    /// Learned from each partition's stops, by partition name.
    pub partitions: std::collections::HashMap<String, StopCost>,
}

impl StopCosts {
    /// The model for the next stop of `partition`.
    pub fn of(&self, partition: &str) -> StopCost {
        self.partitions.get(partition).copied().unwrap_or(self.host)
    }

    /// Takes in a stop of `partition`, for the host and for the
    /// partition (the host's model averages every stop, overruns too). A
    /// partition's first stop here starts its model from the
    /// host's figures before it: the half the stop does not measure (the
    /// fixed cost, or the cost per page) is the host's.
    pub fn learn(&mut self, partition: &str, s: &StopSample) {
        let own = self.partitions.entry(partition.to_string()).or_insert(self.host);
        own.learn(s);
        // One partition's overrun says little of the others': the host's
        // model averages it.
        self.host.learn_with(s, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB_PAGES: u64 = 256;
    /// 100 MiB/s.
    const BW: f64 = 100.0 * 1048576.0;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A measure after `history.len()` rounds.
    fn m(history: &[u64], sent_last: u64, dirty_rate: f64, throttle: f64, at_throttle: u32) -> Measure {
        Measure {
            round: history.len() as u32,
            remaining: *history.last().unwrap(),
            sent_last,
            dirty_rate,
            bandwidth: BW,
            elapsed: Duration::from_secs(history.len() as u64),
            throttle,
            rounds_at_throttle: at_throttle,
            history: history.to_vec(),
            untracked: 0,
        }
    }

    #[test]
    fn decisions() {
        let d = Limits::default();
        let force = Limits { force_switch: true, ..d.clone() };
        let costly = Limits { fixed_cost: ms(30), ..d.clone() };
        let too_costly = Limits { fixed_cost: ms(80), ..d.clone() };
        let too_costly_forced = Limits { fixed_cost: ms(80), force_switch: true, ..d.clone() };
        // 100 MiB/s carries 1 MiB in 10 ms: 5 MiB fit in 50 ms.
        let fits = 5 * MIB_PAGES;
        let big = 64 * MIB_PAGES;
        // An 8 MiB working set rewritten all the time.
        let w = 8 * MIB_PAGES;
        #[rustfmt::skip]
        let table: Vec<(&str, Measure, &Limits, Decision)> = vec![
            ("nothing left", m(&[0], big, 0.0, 0.0, 1), &d, Decision::Switchover),
            ("remaining fits the downtime exactly", m(&[fits], big, 10.0, 0.0, 1), &d, Decision::Switchover),
            ("one page more than fits", m(&[fits + 1], big, 10.0, 0.0, 1), &d, Decision::Continue),
            ("fixed cost leaves room for 2 MiB", m(&[2 * MIB_PAGES], big, 10.0, 0.0, 1), &costly, Decision::Switchover),
            ("fixed cost leaves no room for 3 MiB", m(&[3 * MIB_PAGES], big, 10.0, 0.0, 1), &costly, Decision::Continue),
            ("fixed cost above the downtime", m(&[0], big, 0.0, 0.0, 1), &too_costly,
                Decision::Abort(AbortReason::DowntimeUnreachable { fixed_cost: ms(80), max_downtime: ms(50) })),
            ("fixed cost above the downtime, forced: pages alone must fit", m(&[fits], big, 10.0, 0.0, 1), &too_costly_forced, Decision::Switchover),
            ("fixed cost above the downtime, forced, too many pages", m(&[big], big, 10.0, 0.0, 1), &too_costly_forced, Decision::Continue),
            ("no bandwidth measured, pages left", Measure { bandwidth: 0.0, ..m(&[1], big, 0.0, 0.0, 1) }, &d, Decision::Continue),
            ("no bandwidth measured, nothing left", Measure { bandwidth: 0.0, ..m(&[0], big, 0.0, 0.0, 1) }, &d, Decision::Switchover),
            ("converging: more than halves each round", m(&[16384, 8000, 3900], 8000, 100.0, 0.0, 3), &d, Decision::Continue),
            ("stalled two rounds: first throttle", m(&[w, w, w], w, 100.0, 0.0, 3), &d, Decision::Throttle(0.20)),
            ("stalled only in the last round", m(&[4 * w, w, w], w, 100.0, 0.0, 3), &d, Decision::Continue),
            ("hot last round judged by what it sent", m(&[w, w, w], 3 * w, 100.0, 0.0, 3), &d, Decision::Continue),
            ("stalled two rounds: next step", m(&[big, 2048, 2000, 1900], 2000, 100.0, 0.20, 2), &d, Decision::Throttle(0.40)),
            ("stalled, steps add whole points", m(&[big, 2048, 2000, 1900], 2000, 100.0, 0.40, 2), &d, Decision::Throttle(0.60)),
            ("stalled, new throttle had one round only", m(&[big, 2048, 2000, 1900], 2000, 100.0, 0.20, 1), &d, Decision::Continue),
            ("stalled near the ceiling: capped", m(&[big, 2048, 2000, 1900], 2000, 100.0, 0.80, 2), &d, Decision::Throttle(0.99)),
            ("stalled at the ceiling", m(&[big, 2048, 2000, 1900], 2000, 100.0, 0.99, 2), &d, Decision::Continue),
            ("dirtying faster than the link: throttle after one round",
                m(&[big, big / 4], big, BW / 4096.0, 0.0, 1), &d, Decision::Throttle(0.20)),
            ("dirtying faster than the link, throttle just set", m(&[big, big / 4], big, BW / 4096.0, 0.20, 0), &d, Decision::Continue),
            ("dirtying slower than the link", m(&[big, big / 4], big, BW / 4096.0 - 1.0, 0.0, 1), &d, Decision::Continue),
            ("round limit", Measure { round: 1000, ..m(&[big, big], big, 1.0, 0.0, 5) }, &d,
                Decision::Abort(AbortReason::RoundLimit { rounds: 1000, limit: 1000 })),
            ("round limit, forced", Measure { round: 1000, ..m(&[big, big], big, 1.0, 0.0, 5) }, &force, Decision::Switchover),
            ("time limit", Measure { elapsed: Duration::from_secs(120), ..m(&[big, big], big, 1.0, 0.0, 5) }, &d,
                Decision::Abort(AbortReason::TimeLimit { elapsed: Duration::from_secs(120), limit: Duration::from_secs(120) })),
            ("time limit, forced", Measure { elapsed: Duration::from_secs(121), ..m(&[big, big], big, 1.0, 0.0, 5) }, &force, Decision::Switchover),
            ("limit reached but the rest fits: switch", Measure { round: 1001, ..m(&[big, fits], big, 1.0, 0.0, 5) }, &d, Decision::Switchover),
            ("just below the round limit", Measure { round: 999, ..m(&[big, big / 4], big, 1.0, 0.0, 1) }, &d, Decision::Continue),
            // Pages no tracker follows cannot be waited away: the rest
            // decides, even when they alone would not fit.
            ("only untracked pages left", Measure { untracked: big, ..m(&[big, big], big, 0.0, 0.0, 1) }, &d, Decision::Switchover),
            ("untracked pages and a rest that fits", Measure { untracked: big, ..m(&[big, big + fits], big, 0.0, 0.0, 1) }, &d, Decision::Switchover),
            ("untracked pages and a rest too big", Measure { untracked: big, ..m(&[big, 2 * big], big, 0.0, 0.0, 1) }, &d, Decision::Continue),
        ];
        for (name, measure, limits, want) in table {
            assert_eq!(decide(&measure, limits), want, "{name}: {measure:?}");
        }
    }

    #[test]
    fn throttle_steps_up_to_the_ceiling() {
        let l = Limits::default();
        let mut t = 0.0;
        let mut steps = Vec::new();
        while let Some(n) = next_throttle(t, &l) {
            steps.push(n);
            t = n;
        }
        assert_eq!(steps, vec![0.20, 0.40, 0.60, 0.80, 0.99]);
    }

    #[test]
    fn abort_reasons_name_the_limit() {
        let r = AbortReason::RoundLimit { rounds: 30, limit: 30 }.to_string();
        assert!(r.contains("round limit") && r.contains("30"), "{r}");
        let t = AbortReason::TimeLimit { elapsed: Duration::from_secs(121), limit: Duration::from_secs(120) }.to_string();
        assert!(t.contains("time limit") && t.contains("120.0 s"), "{t}");
        let d = AbortReason::DowntimeUnreachable { fixed_cost: ms(80), max_downtime: ms(50) }.to_string();
        assert!(d.contains("80.0 ms") && d.contains("50.0 ms"), "{d}");
    }

    #[test]
    fn expected_downtime_adds_fixed_cost() {
        let l = Limits { fixed_cost: ms(20), ..Limits::default() };
        let got = expected_downtime(&m(&[MIB_PAGES], 0, 0.0, 0.0, 0), &l);
        assert!((got - 0.030).abs() < 1e-9, "{got}");
    }
    #[test]
    fn stop_cost_is_learned_and_bounded() {
        let ms = Duration::from_millis;
        // (stops seen as (downtime ms, pages), fixed, per page, fixed counted
        // within 50 ms, stop rate at 600 MB/s rounds)
        type Case = (&'static [(f64, u64)], Option<f64>, Option<f64>, Duration, f64);
        let cases: &[Case] = &[
            // Nothing measured: the guess, a sixth of the round rate.
            (&[], None, None, ms(25), 100e6),
            // A stop with few pages measures the fixed cost.
            (&[(12.0, 100)], Some(12.0), None, ms(12), 100e6),
            // Averaged with the next one.
            (&[(12.0, 100), (20.0, 50)], Some(16.0), None, ms(16), 100e6),
            // A large fixed cost never counts for more than 60 % of the
            // downtime.
            (&[(80.0, 10)], Some(80.0), None, ms(30), 100e6),
            // A stop with many pages measures the cost per page beyond the
            // fixed cost: 0.01 ms a page is 409.6 MB/s, above a sixth.
            (&[(10.0, 10), (30.0, 2000)], Some(10.0), Some(0.01), ms(10), 100e6),
            // A slow stop (0.1 ms a page, 40.96 MB/s) is the rate counted.
            (&[(10.0, 10), (210.0, 2000)], Some(10.0), Some(0.1), ms(10), 40.96e6),
            // Before the fixed cost was measured, the guess is taken off.
            (&[(45.0, 2000)], None, Some(0.01), ms(25), 100e6),
        ];
        for (i, (stops, fixed, per, counted, rate)) in cases.iter().enumerate() {
            let mut c = StopCost::default();
            for &(d, p) in stops.iter() {
                c.learn(&StopSample { downtime_ms: d, pages: p, pages_ms: 0.0, over: None });
            }
            let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => (a - b).abs() < 1e-9,
                (a, b) => a == b,
            };
            assert!(close(c.fixed_ms, *fixed) && close(c.ms_per_page, *per), "case {i}: {c:?}");
            assert_eq!(c.fixed(ms(50)), *counted, "case {i}");
            assert!((c.stop_rate(600e6) - rate).abs() < 1e3, "case {i}: {}", c.stop_rate(600e6));
        }
    }

    #[test]
    fn an_overrun_is_learned_at_once_and_by_its_phase() {
        let kept = |d: f64, p: u64| StopSample { downtime_ms: d, pages: p, pages_ms: 0.0, over: None };
        let over = |d: f64, p: u64, pages_ms: f64, ph: StopPhase| StopSample { downtime_ms: d, pages: p, pages_ms, over: Some(ph) };
        // (stops, fixed, per page)
        type Case = (&'static str, Vec<StopSample>, Option<f64>, Option<f64>);
        let cases: Vec<Case> = vec![
            ("kept stops average", vec![kept(10.0, 10), kept(30.0, 10)], Some(20.0), None),
            (
                "an overrun with few pages replaces a lower fixed cost",
                vec![kept(10.0, 10), over(60.0, 10, 0.0, StopPhase::Restore)],
                Some(60.0),
                None,
            ),
            ("an overrun below the average is averaged", vec![kept(80.0, 10), over(60.0, 10, 0.0, StopPhase::Freeze)], Some(70.0), None),
            (
                "a kept stop after an overrun brings it down again",
                vec![kept(10.0, 10), over(60.0, 10, 0.0, StopPhase::Freeze), kept(20.0, 10)],
                Some(40.0),
                None,
            ),
            // 2000 pages that took 10 ms, a restore that went over: the
            // fixed cost is what remains without the pages.
            (
                "an overrun in a fixed phase with many pages measures the fixed cost",
                vec![kept(10.0, 10), over(70.0, 2000, 10.0, StopPhase::Restore)],
                Some(60.0),
                None,
            ),
            // The last pages went over: 0.05 ms a page beyond the 10 ms.
            (
                "an overrun in the last pages measures the cost per page",
                vec![kept(10.0, 10), kept(30.0, 2000), over(110.0, 2000, 90.0, StopPhase::LastPages)],
                Some(10.0),
                Some(0.05),
            ),
        ];
        for (name, stops, fixed, per) in cases {
            let mut c = StopCost::default();
            for s in &stops {
                c.learn(s);
            }
            let close = |a: Option<f64>, b: Option<f64>| match (a, b) {
                (Some(a), Some(b)) => (a - b).abs() < 1e-9,
                (a, b) => a == b,
            };
            assert!(close(c.fixed_ms, fixed) && close(c.ms_per_page, per), "{name}: {c:?}");
        }
    }

    #[test]
    fn a_partition_learns_its_own_stop_and_its_next_stop_keeps_the_budget() {
        let budget = Duration::from_millis(50);
        let mut costs = StopCosts::default();
        // Small partitions stop in 12 ms.
        for _ in 0..3 {
            costs.learn("small", &StopSample { downtime_ms: 12.0, pages: 20, pages_ms: 0.5, over: None });
        }
        // A partition whose restore takes 28 ms more: decided on the
        // host's 12 ms, which left 38 ms for its pages, its stop went over.
        // The stop moves 60 MB/s here: 500 pages (2 MB) take 34 ms, 250
        // pages 17 ms.
        let limits = |c: StopCost| Limits { fixed_cost: c.fixed(budget), ..Limits::default() };
        let measure = |pages: u64, c: StopCost| Measure {
            round: 3,
            remaining: pages,
            sent_last: 4 * pages,
            bandwidth: c.stop_rate(360e6),
            elapsed: Duration::from_secs(1),
            history: vec![100_000, 4 * pages, pages],
            ..Measure::default()
        };
        let before = costs.of("big");
        assert_eq!(before.fixed(budget), Duration::from_millis(12));
        assert_eq!(decide(&measure(500, before), &limits(before)), Decision::Switchover);
        costs.learn("big", &StopSample { downtime_ms: 70.0, pages: 3000, pages_ms: 30.0, over: Some(StopPhase::Restore) });
        let big = costs.of("big");
        assert_eq!(big.fixed_ms, Some(40.0), "{big:?}");
        // Its next stop counts 30 ms of it (the share of the budget the
        // fixed cost may take), leaving 20 ms for pages.
        assert_eq!(big.fixed(budget), Duration::from_millis(30));
        assert_eq!(decide(&measure(500, big), &limits(big)), Decision::Continue);
        assert_eq!(decide(&measure(250, big), &limits(big)), Decision::Switchover);
        // The host learned it too, averaged with the others' stops.
        assert!(costs.host.fixed_ms.unwrap() > 12.0 && costs.host.fixed_ms.unwrap() < 40.0, "{:?}", costs.host);
        // The small partitions keep their own figure.
        assert_eq!(costs.of("small").fixed_ms, Some(12.0));
    }
}
