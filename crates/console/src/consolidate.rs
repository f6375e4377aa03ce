//! `consolidate`: pack partitions onto the fewest hosts that hold them
//! with headroom, and list the hosts that can then be powered off.

use std::cmp::Reverse;

use crate::inventory::{Inventory, Rules};
use crate::model::{Model, PlanError, Role};
use crate::plan::{Plan, Policy, Why};

/// Plan emptying hosts. Hosts are taken emptiest first (fewest moves per
/// host freed); a host is emptied all or nothing: its partitions, largest
/// first, each go to the receiving host they fill best (first-fit
/// decreasing with best fit), and if one finds no host, the host's moves
/// are taken back and it stays, named in `left` by the partition that
/// kept it. A host that received partitions is never emptied after, so no
/// partition moves twice and no host ends with more than before.
pub fn consolidate(inv: &Inventory, rules: &Rules) -> Result<Plan, PlanError> {
    let mut m = Model::new(inv, rules)?;
    let before = m.figures(None);
    let n = inv.hosts.len();
    let mut cands: Vec<usize> = (0..n).filter(|&h| !m.closed[h] && !m.on[h].is_empty()).collect();
    cands.sort_by_key(|&h| (m.load(h), m.on[h].len(), h));
    let mut left = Vec::new();
    let (mut emptied, mut kept) = (0usize, 0usize);
    for h in cands {
        if m.role[h] == Role::Receiver {
            continue;
        }
        if let Some((p, r)) = m.on[h].iter().find_map(|&p| m.immobile(p).map(|r| (p, r))) {
            left.push((p, r));
            kept += 1;
            continue;
        }
        let mut ps = m.on[h].clone();
        ps.sort_by_key(|&p| Reverse(m.size[p]));
        let mark = m.mark();
        let mut failed = None;
        for p in ps {
            let mut best: Option<(u64, usize)> = None;
            for t in 0..n {
                // A host empty before stays empty: filling it would
                // not lower the count of hosts in use.
                if !m.on[t].is_empty() && m.fits(p, t) {
                    let l = m.load_with(t, m.used[t] + m.fp[p]);
                    if best.is_none_or(|(bl, _)| l > bl) {
                        best = Some((l, t));
                    }
                }
            }
            match best {
                Some((_, t)) => m.shift(p, t, Why::Consolidate { host: inv.hosts[h].name.clone() }),
                None => {
                    failed = Some((p, m.no_target(p)));
                    break;
                }
            }
        }
        match failed {
            Some(f) => {
                m.undo_to(mark);
                left.push(f);
                kept += 1;
            }
            None => emptied += 1,
        }
    }
    let notes = vec![format!("{emptied} hosts emptied, {kept} kept by a partition that cannot leave them")];
    Ok(m.finish(Policy::Consolidate, before, left, notes, None))
}
