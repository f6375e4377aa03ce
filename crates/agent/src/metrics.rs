//! lpmd's metrics in the Prometheus text format (version 0.0.4), served
//! at `GET /metrics` on the remote API's listener (docs/api.md).
//!
//! Everything is read at scrape time from what lpmd keeps anyway: the
//! partition table, the migrations under way, the reports kept on disk
//! (one per migration, `DIR/reports`) and the host's cgroup limits. The
//! migration counters and histograms are over the reports of the
//! migrations this host was the source of, so they survive a restart of
//! lpmd and no code on the migration's path has to count.

use std::fmt::Write;

use lpm_migrate::report::{Outcome, Report};

use crate::api::Response;
use crate::state::{lock, Agent};

/// The buckets of the downtime histogram, seconds.
const DOWNTIME_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// The buckets of the total-time histogram, seconds.
const TOTAL_BUCKETS: [f64; 10] = [0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
/// The outcomes a migration ends with, as labels.
const OUTCOMES: [&str; 4] = ["completed", "aborted", "failed", "in_doubt"];

fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Completed => "completed",
        Outcome::Aborted { .. } => "aborted",
        Outcome::Failed { .. } => "failed",
        Outcome::InDoubt { .. } => "in_doubt",
    }
}

/// A metric family being written: its HELP and TYPE lines first.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A value as Prometheus writes floats (integers without a fraction).
fn num(v: f64) -> String {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn histogram(out: &mut String, name: &str, help: &str, buckets: &[f64], values: &[f64]) {
    family(out, name, "histogram", help);
    for b in buckets {
        let n = values.iter().filter(|v| **v <= *b).count();
        let _ = writeln!(out, "{name}_bucket{{le=\"{}\"}} {n}", num(*b));
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", values.len());
    let _ = writeln!(out, "{name}_sum {}", num(values.iter().sum()));
    let _ = writeln!(out, "{name}_count {}", values.len());
}

/// The metrics page of `agent`'s host.
pub(crate) fn render(agent: &Agent) -> String {
    let mut out = String::new();
    let host = &agent.opts.host;

    // Partitions by state, and what they take of the host.
    let (mut running, mut stopped, mut migrating) = (0u64, 0u64, 0u64);
    let (mut used, mut mem_limits, mut cpus) = (0u64, 0u64, 0f64);
    for e in agent.parts().values() {
        let info = agent.info(e);
        match info.state.as_str() {
            "running" => running += 1,
            "migrating" => migrating += 1,
            _ => stopped += 1,
        }
        used += info.memory_current.unwrap_or(0);
        mem_limits += e.spec.memory.unwrap_or(0);
        cpus += e.spec.cpus.unwrap_or(0.0);
    }
    family(&mut out, "lpm_partitions", "gauge", "Partitions on this host, by state.");
    for (state, n) in [("running", running), ("stopped", stopped), ("migrating", migrating)] {
        let _ = writeln!(out, "lpm_partitions{{state=\"{state}\"}} {n}");
    }

    // Migrations under way, by this host's side.
    let (mut outgoing, mut incoming) = (0u64, 0u64);
    for m in lock(&agent.migrations).values() {
        if m.outgoing() {
            outgoing += 1;
        } else {
            incoming += 1;
        }
    }
    family(&mut out, "lpm_migrations_in_progress", "gauge", "Migrations under way on this host, by its side.");
    let _ = writeln!(out, "lpm_migrations_in_progress{{side=\"source\"}} {outgoing}");
    let _ = writeln!(out, "lpm_migrations_in_progress{{side=\"target\"}} {incoming}");

    // Finished migrations this host was the source of.
    let reports: Vec<Report> = match agent.reports() {
        Ok(Response::Reports(r)) => r.into_iter().filter(|r| &r.source == host).collect(),
        _ => Vec::new(),
    };
    family(&mut out, "lpm_migrations_total", "counter", "Migrations this host was the source of, by outcome.");
    for o in OUTCOMES {
        let n = reports.iter().filter(|r| outcome_label(&r.outcome) == o).count();
        let _ = writeln!(out, "lpm_migrations_total{{outcome=\"{o}\"}} {n}");
    }
    let completed: Vec<&Report> = reports.iter().filter(|r| r.outcome == Outcome::Completed).collect();
    let downtimes: Vec<f64> = completed.iter().map(|r| r.downtime_ms / 1e3).collect();
    histogram(
        &mut out,
        "lpm_migration_downtime_seconds",
        "Downtime (frozen on the source to running on the target) of completed migrations from this host.",
        &DOWNTIME_BUCKETS,
        &downtimes,
    );
    let totals: Vec<f64> = completed.iter().map(|r| r.total_ms / 1e3).collect();
    histogram(&mut out, "lpm_migration_total_seconds", "Total time of completed migrations from this host.", &TOTAL_BUCKETS, &totals);
    family(&mut out, "lpm_migration_sent_bytes_total", "counter", "Bytes this host sent on the wire for its migrations, all outcomes.");
    let _ = writeln!(out, "lpm_migration_sent_bytes_total {}", reports.iter().map(|r| r.bytes_total).sum::<u64>());
    family(&mut out, "lpm_migration_precopy_rounds_total", "counter", "Pre-copy rounds of the migrations from this host, all outcomes.");
    let _ = writeln!(out, "lpm_migration_precopy_rounds_total {}", reports.iter().map(|r| r.rounds.len() as u64).sum::<u64>());

    // Capacity and use.
    match agent.ctx.headroom() {
        Ok(room) => {
            family(
                &mut out,
                "lpm_host_memory_available_bytes",
                "gauge",
                "Memory partitions may still take here (cgroup limits, MemAvailable).",
            );
            let _ = writeln!(out, "lpm_host_memory_available_bytes {}", room.memory);
            family(&mut out, "lpm_host_cpus_available", "gauge", "CPUs partitions may use here (cgroup limits, online CPUs).");
            let _ = writeln!(out, "lpm_host_cpus_available {}", num(room.cpus));
        }
        Err(e) => tracing::warn!(error = %e, "metrics: this host's limits unreadable"),
    }
    family(&mut out, "lpm_host_partition_memory_bytes", "gauge", "Memory the partitions here use now (their cgroups).");
    let _ = writeln!(out, "lpm_host_partition_memory_bytes {used}");
    family(&mut out, "lpm_host_partition_memory_limit_bytes", "gauge", "Memory limits of the partitions here, summed.");
    let _ = writeln!(out, "lpm_host_partition_memory_limit_bytes {mem_limits}");
    family(&mut out, "lpm_host_partition_cpus", "gauge", "CPU limits of the partitions here, summed.");
    let _ = writeln!(out, "lpm_host_partition_cpus {}", num(cpus));
    out
}

/// `agent`'s host capacity and use (`GET /v1/host`): the figures of the
/// metrics page's "capacity and use", as one document.
pub(crate) fn host_info(agent: &Agent) -> anyhow::Result<crate::api::HostInfo> {
    let mut h = crate::api::HostInfo { host: agent.opts.host.clone(), ..Default::default() };
    for e in agent.parts().values() {
        let info = agent.info(e);
        h.partitions += 1;
        if info.state == "running" {
            h.running += 1;
        }
        h.memory_partitions_bytes += info.memory_current.unwrap_or(0);
        h.cpus_reserved += e.spec.cpus.unwrap_or(0.0);
    }
    h.migrations = lock(&agent.migrations).len() as u32;
    let room = agent.ctx.headroom().map_err(|e| anyhow::anyhow!("{}: this host's limits unreadable: {e}", agent.opts.host))?;
    h.memory_available_bytes = room.memory;
    h.memory_bytes = room.memory + h.memory_partitions_bytes;
    h.memory_bound = room.memory_bound;
    h.cpus = room.cpus;
    h.cpus_bound = room.cpus_bound;
    // A load average that cannot be read says nothing: 0 then, the
    // figures above are what the console plans with.
    h.load1 = std::fs::read_to_string("/proc/loadavg").ok().and_then(|t| t.split_whitespace().next()?.parse().ok()).unwrap_or(0.0);
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_is_cumulative_and_counts_every_value() {
        let mut out = String::new();
        histogram(&mut out, "x_seconds", "h", &[0.1, 1.0], &[0.0625, 0.5, 4.0]);
        let want = "# HELP x_seconds h\n# TYPE x_seconds histogram\nx_seconds_bucket{le=\"0.1\"} 1\nx_seconds_bucket{le=\"1\"} 2\n\
                    x_seconds_bucket{le=\"+Inf\"} 3\nx_seconds_sum 4.5625\nx_seconds_count 3\n";
        assert_eq!(out, want);
    }
}
