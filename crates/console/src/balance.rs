//! `balance`: even out memory and CPU load across hosts with few moves.

use std::collections::BTreeSet;

use crate::inventory::{Inventory, Rules};
use crate::model::{Model, PlanError};
use crate::plan::{Plan, Policy, Why};

/// Receiving hosts that fit a partition examined per partition, lowest
/// load first: the best target is almost always among the first.
const FITTING: usize = 4;
/// Receiving hosts scanned per partition at most, fitting or not: bounds
/// a plan's time on a large inventory where big partitions fit few hosts.
const SCANNED: usize = 64;

/// Plan evening out load. A host's load is the larger of its memory and
/// CPU use over capacity. Objective: lower the highest load, then the
/// next, one move at a time. Each step takes the most loaded host that
/// may still send and makes its best move: the partition and target (one
/// of the least loaded that fit) that leave the higher of the two hosts'
/// loads lowest; the move is made only if that is below the source's
/// load before by more than `epsilon_pct`. A host with no such move is
/// given up (its partitions that cannot leave are named in `left`). The
/// plan stops when the most and least loaded hosts are within
/// `spread_pct`, at `max_moves`, or when every host is given up.
pub fn balance(inv: &Inventory, rules: &Rules) -> Result<Plan, PlanError> {
    let mut m = Model::new(inv, rules)?;
    let before = m.figures(None);
    let goal = rules.balance;
    let spread = (goal.spread_pct * 10_000.0) as u64;
    let eps = (goal.epsilon_pct * 10_000.0) as u64;
    let active: Vec<usize> = (0..inv.hosts.len()).filter(|&h| !m.closed[h]).collect();
    let keyed: BTreeSet<(u64, usize)> = active.iter().map(|&h| (m.load(h), h)).collect();
    // Every active host by load; those that may still send; those that
    // may still receive.
    let (mut all, mut donors, mut recv) = (keyed.clone(), keyed.clone(), keyed);
    let mut left = Vec::new();
    let mut notes = Vec::new();
    let (mut moves, mut given_up) = (0usize, 0usize);
    loop {
        if goal.max_moves.is_some_and(|n| moves >= n) {
            notes.push(format!("stopped at the limit of {moves} moves"));
            break;
        }
        let (Some(&(lo, _)), Some(&(hi, _))) = (all.first(), all.last()) else { break };
        if hi - lo <= spread {
            notes.push(format!("loads within {:.1} points of each other", (hi - lo) as f64 / 10_000.0));
            break;
        }
        let Some(&(top, d)) = donors.last() else {
            notes.push(format!("no host can shed more load ({given_up} given up)"));
            break;
        };
        // (higher of the two loads after, partition, target, source after, target after)
        let mut best: Option<(u64, usize, usize, u64, u64)> = None;
        for &p in &m.on[d] {
            if m.moved(p) || m.immobile(p).is_some() {
                continue;
            }
            let d_after = m.load_with(d, m.used[d] - m.fp[p]);
            if best.is_some_and(|b| d_after >= b.0) {
                continue;
            }
            let (mut fitting, mut scanned) = (0, 0);
            for &(tl, t) in &recv {
                if tl + eps >= top || fitting == FITTING || scanned == SCANNED {
                    break;
                }
                scanned += 1;
                if !m.fits(p, t) {
                    continue;
                }
                fitting += 1;
                let t_after = m.load_with(t, m.used[t] + m.fp[p]);
                let v = d_after.max(t_after);
                if v + eps < top && best.is_none_or(|b| v < b.0) {
                    best = Some((v, p, t, d_after, t_after));
                }
            }
        }
        let Some((_, p, t, d_after, t_after)) = best else {
            donors.remove(&(top, d));
            given_up += 1;
            left.extend(m.on[d].iter().filter_map(|&p| m.immobile(p).map(|r| (p, r))));
            continue;
        };
        let t_before = m.load(t);
        let pct = |x: u64| (x as f64 / 1_000.0).round() / 10.0;
        m.shift(p, t, Why::Balance { from_before: pct(top), from_after: pct(d_after), to_before: pct(t_before), to_after: pct(t_after) });
        moves += 1;
        all.remove(&(top, d));
        all.remove(&(t_before, t));
        donors.remove(&(top, d));
        donors.remove(&(t_before, t));
        recv.remove(&(top, d));
        recv.remove(&(t_before, t));
        all.insert((d_after, d));
        all.insert((t_after, t));
        donors.insert((d_after, d));
        recv.insert((t_after, t));
    }
    if given_up > 0 {
        notes.push(format!("{given_up} hosts had no move lowering their load by more than {} points", goal.epsilon_pct));
    }
    Ok(m.finish(Policy::Balance, before, left, notes, None))
}
