//! `evacuate(host)`: every partition off one host, which is then in
//! maintenance and receives nothing.

use std::cmp::Reverse;

use crate::inventory::{Inventory, Rules};
use crate::model::{Model, PlanError};
use crate::plan::{Plan, Policy, Why};

/// Plan moving every partition off `host`. Largest first, each goes to
/// the receiving host that ends least loaded with it (the plan spreads
/// the evacuated load rather than piling it up). A partition that cannot
/// leave or finds no host stays and is named in `left` with why.
pub fn evacuate(inv: &Inventory, rules: &Rules, host: &str) -> Result<Plan, PlanError> {
    let mut m = Model::new(inv, rules)?;
    let Some(&h) = m.by_name.get(host) else {
        return Err(PlanError::NoSuchHost { host: host.into() });
    };
    let before = m.figures(None);
    // In maintenance from the start: none of its own partitions may come
    // back to it, and no other plan may pick it.
    m.closed[h] = true;
    let mut ps = m.on[h].clone();
    ps.sort_by_key(|&p| Reverse(m.size[p]));
    let mut left = Vec::new();
    for p in ps {
        if let Some(r) = m.immobile(p) {
            left.push((p, r));
            continue;
        }
        let mut best: Option<(u64, usize)> = None;
        for t in 0..inv.hosts.len() {
            if m.fits(p, t) {
                let l = m.load_with(t, m.used[t] + m.fp[p]);
                if best.is_none_or(|(bl, _)| l < bl) {
                    best = Some((l, t));
                }
            }
        }
        match best {
            Some((_, t)) => m.shift(p, t, Why::Evacuate { host: host.into() }),
            None => left.push((p, m.no_target(p))),
        }
    }
    let notes = if left.is_empty() {
        Vec::new()
    } else {
        vec![format!("{host} keeps {} partitions: it is in maintenance but not empty", left.len())]
    };
    Ok(m.finish(Policy::Evacuate { host: host.into() }, before, left, notes, Some(h)))
}
