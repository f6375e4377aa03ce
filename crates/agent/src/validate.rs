//! A migration's validation: every check has a name, passes or fails,
//! and says what it found or why it failed. The source checks what only
//! it can see (the request's arguments, the partition's state against the
//! checkpoint's rules, its own limits) and asks the target for the rest
//! (room for the partition, clashes, kernel and CPU, volumes, network,
//! its limits). A check that could only fail at the stop is a bug of
//! this module: the stop comes after minutes of pre-copy.

use lpm_host::checks::{self, Check};
use lpm_host::partition::PartitionSpec;

use crate::api::MigrateRequest;
use crate::state::Agent;

/// Streams a migration may use at most.
pub const MAX_STREAMS: u32 = 64;

/// The zstd levels lpm accepts (zstd's own range, negative levels
/// being its fast modes).
pub const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -7..=22;

/// The request's arguments.
pub fn arguments(req: &MigrateRequest, here: &str) -> Vec<Check> {
    let mut bad = Vec::new();
    if req.target == here {
        bad.push(format!("partition {} is on {} already", req.name, req.target));
    }
    if !(1..=MAX_STREAMS).contains(&req.streams) {
        bad.push(format!("--streams {} (1 to {MAX_STREAMS})", req.streams));
    }
    if req.max_downtime_ms == 0 {
        bad.push("--max-downtime 0 (no migration stops for no time)".into());
    }
    if req.max_total_s == 0 {
        bad.push("--max-time 0".into());
    }
    if let Some(l) = req.compress {
        if !ZSTD_LEVELS.contains(&l) || l == 0 {
            bad.push(format!("zstd level {l} (levels {} to {}, not 0)", ZSTD_LEVELS.start(), ZSTD_LEVELS.end()));
        }
    }
    vec![if bad.is_empty() { Check::pass("arguments", "as given") } else { Check::fail("arguments", bad.join("; ")) }]
}

/// What the source checks: the partition's state against the checkpoint's
/// own rules (read from the running tree in a few milliseconds, nothing
/// stopped) and its outgoing migrations.
pub fn source(agent: &Agent, req: &MigrateRequest, pid: i32) -> Vec<Check> {
    let mut out = arguments(req, &agent.opts.host);
    let userns = agent.parts().get(&req.name).and_then(|e| e.spec.isolation.userns);
    if let Some(ns) = userns {
        // Ids and capabilities inside are relative to the namespace's
        // maps, which the restore does not make again: the checkpoint
        // would refuse the tree at the stop; this says why, up front.
        out.push(Check::fail(
            "user namespace",
            format!(
                "partition {} runs in a user namespace of its own (--userns, host ids {} to {}): a partition in a user namespace is not migrated yet (its restore would not recreate the namespace and its maps)",
                req.name,
                ns.first,
                ns.range().end - 1
            ),
        ));
    }
    let opts =
        lpm_engine::DumpOptions { after: lpm_engine::After::Frozen, tcp_established: true, external_netns: true, ..Default::default() };
    match lpm_engine::inspect(pid, &opts) {
        Ok(i) => {
            let lasting: Vec<String> = i.lasting().map(|r| r.to_string()).collect();
            let passing: Vec<String> = i.refusals.iter().filter(|r| r.transient).map(|r| r.to_string()).collect();
            let unreadable: Vec<String> = i.unreadable.iter().map(|e| e.to_string()).collect();
            let summary = format!(
                "{} processes, {} threads, {} descriptors, {} areas read in {:.1} ms",
                i.processes,
                i.threads,
                i.descriptors,
                i.areas,
                i.elapsed.as_secs_f64() * 1e3
            );
            if !lasting.is_empty() || !unreadable.is_empty() {
                let mut why = lasting;
                why.extend(unreadable.into_iter().map(|u| format!("unreadable: {u}")));
                out.push(Check::fail("state", why.join("; ")));
            } else if !passing.is_empty() {
                // They may pass before the stop; the stop refuses them if
                // they still hold then, and the partition runs on here.
                out.push(Check::pass("state", format!("{summary}; at this moment also: {}", passing.join("; "))));
            } else {
                out.push(Check::pass("state", format!("supported: {summary}")));
            }
        }
        Err(e) => out.push(Check::fail("state", format!("cannot inspect the partition: {e}"))),
    }
    let n = agent.under_way(true);
    out.push(if n < agent.opts.max_outgoing {
        Check::pass("outgoing", format!("{n} of {} outgoing migrations under way", agent.opts.max_outgoing))
    } else {
        Check::fail("outgoing", format!("{n} outgoing migrations under way, the most this host runs at once"))
    });
    out
}

/// Whether this host has free the huge pages a partition's hugetlbfs
/// areas reserve (`needed`: page size in bytes and count), checked again
/// by the restore before it makes anything.
pub fn huge_pages(needed: &[(u64, u64)]) -> Check {
    let needed: std::collections::BTreeMap<u64, u64> = needed.iter().copied().collect();
    if needed.values().all(|&n| n == 0) {
        return Check::pass("huge pages", "none needed");
    }
    let what = needed.iter().map(|(s, n)| format!("{n} of {} kB", s >> 10)).collect::<Vec<_>>().join(", ");
    match lpm_engine::hugetlb::check_free(&needed) {
        Ok(()) => Check::pass("huge pages", format!("{what} needed, free here")),
        Err(e) => Check::fail("huge pages", e.to_string()),
    }
}

/// What the target checks before it takes a partition.
pub fn target(agent: &Agent, spec: &PartitionSpec, memory: u64, volumes: &[lpm_host::volume::VolumeId], cpu: &[u8]) -> Vec<Check> {
    let mut out = Vec::new();
    if let Err(e) = spec.validate() {
        out.push(Check::fail("spec", e.to_string()));
    }
    // Clashes with what runs here, and with what is arriving.
    let others: Vec<(String, PartitionSpec)> = agent.parts().values().map(|e| (agent.opts.host.clone(), e.spec.clone())).collect();
    out.extend(checks::uniqueness(spec, &others));
    let arriving = agent.migrations_of(&spec.name);
    if arriving > 0 {
        out.push(Check::fail("incoming", format!("partition {} is arriving here already", spec.name)));
    }
    match agent.ctx.headroom() {
        Ok(room) => {
            let need = spec.memory.unwrap_or(memory).max(memory);
            out.push(if need <= room.memory {
                Check::pass("memory", format!("{} MiB needed, {} MiB free ({})", need >> 20, room.memory >> 20, room.memory_bound))
            } else {
                Check::fail("memory", format!("{} MiB needed, {} MiB allowed ({})", need >> 20, room.memory >> 20, room.memory_bound))
            });
            out.extend(checks::fits(spec, &agent.opts.host, &room).into_iter().filter(|c| c.name == "cpus"));
        }
        Err(e) => out.push(Check::fail("memory", format!("cannot read this host's limits: {e}"))),
    }
    let missing = agent.missing_kernel_features();
    out.push(if missing.is_empty() {
        Check::pass("kernel", "every feature present")
    } else {
        Check::fail("kernel", format!("missing: {}", missing.join(", ")))
    });
    // Checked again at restore against the image; here before anything
    // moves, against the whole source CPU.
    out.push(match <lpm_image::CpuInfo as prost::Message>::decode(cpu) {
        Ok(src) if !src.arch.is_empty() => match lpm_engine::cpu::check(&src, &lpm_engine::cpu::this_host()) {
            Ok(()) => Check::pass("cpu", format!("this CPU holds the source's state (xcr0 {:#x}, {} flags)", src.xcr0, src.flags.len())),
            Err(e) => Check::fail("cpu", e.to_string()),
        },
        Ok(_) => Check::fail("cpu", "the source sent no CPU description"),
        Err(e) => Check::fail("cpu", format!("unreadable CPU description from the source: {e}")),
    });
    // By the filesystem's UUID and the source's marker, never by device
    // and inode numbers (one kernel's).
    for v in &spec.volumes {
        out.push(match volumes.iter().find(|id| id.path == *v) {
            Some(id) => match lpm_host::volume::check(id) {
                Ok(what) => Check::pass("volume", what),
                Err(why) => Check::fail("volume", why),
            },
            None => Check::fail(
                "volume",
                format!("volume {}: the source sent no identity of it (unreadable there, or an older lpmd)", v.display()),
            ),
        });
    }
    let bridge = &agent.opts.bridge;
    // Asked of the kernel in lpmd's network namespace (/sys shows the
    // namespace of whoever mounted it).
    out.push(
        if lpm_host::net::rtnl(None, bridge, "look up", |r| r.link(bridge))
            .is_ok_and(|l| l.is_some_and(|l| l.kind.as_deref() == Some("bridge")))
        {
            Check::pass("network", format!("the partition network's bridge {bridge} is here"))
        } else {
            Check::fail("network", format!("no bridge {bridge} here: the partition network does not reach this host"))
        },
    );
    let n = agent.under_way(false);
    out.push(if n < agent.opts.max_incoming {
        Check::pass("incoming", format!("{n} of {} incoming migrations under way", agent.opts.max_incoming))
    } else {
        Check::fail("incoming", format!("{n} incoming migrations under way, the most this host takes at once"))
    });
    out
}
