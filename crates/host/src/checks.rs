//! Named checks of a partition against the hosts it is to run on: that
//! its name, address and MAC are no other partition's, and that its
//! memory and CPU limits fit what a host allows. `lpm partition create`
//! runs them before it asks a host for anything; a migration's
//! validation can run the same ones against its target.
//!
//! A name must be unique across every host, not per host: a partition's
//! files on shared storage (its console log) are found by its name, and
//! its MAC, unless given, is derived from it, on one L2 network.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::cgroup::Headroom;
use crate::partition::PartitionSpec;

/// One check: its name, whether it passed, and what was found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    /// What is checked: "name", "ip", "mac", "memory", "cpus", ...
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// What was found; for a failure, the cause.
    pub detail: String,
}

impl Check {
    /// A check that passed.
    pub fn pass(name: &str, detail: impl Into<String>) -> Check {
        Check { name: name.into(), ok: true, detail: detail.into() }
    }

    /// A check that failed, with its cause.
    pub fn fail(name: &str, cause: impl Into<String>) -> Check {
        Check { name: name.into(), ok: false, detail: cause.into() }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:4} {}: {}", if self.ok { "ok" } else { "FAIL" }, self.name, self.detail)
    }
}

/// The address of a spec, without its prefix length.
fn address(spec: &PartitionSpec) -> Option<Ipv4Addr> {
    spec.ipv4().ok().flatten().map(|(a, _)| a)
}

/// Checks that the name, the address and the MAC (the given one, or the
/// one derived from the name) of `spec` are used by none of `others`:
/// every other partition of every host, as (host, spec). A migration
/// leaves the partition's own record out of `others`.
pub fn uniqueness(spec: &PartitionSpec, others: &[(String, PartitionSpec)]) -> Vec<Check> {
    let mut out = Vec::new();
    match others.iter().find(|(_, o)| o.name == spec.name) {
        Some((host, _)) => out.push(Check::fail("name", format!("a partition named {} exists on {host}", spec.name))),
        None => out.push(Check::pass("name", format!("{} is used by no partition of any host", spec.name))),
    }
    match address(spec) {
        None => out.push(Check::pass("ip", "no address")),
        Some(ip) => match others.iter().find(|(_, o)| address(o) == Some(ip)) {
            Some((host, o)) => out.push(Check::fail("ip", format!("{ip} is the address of partition {} on {host}", o.name))),
            None => out.push(Check::pass("ip", format!("{ip} is used by no partition"))),
        },
    }
    match spec.mac_address() {
        Err(e) => out.push(Check::fail("mac", e.to_string())),
        Ok(mac) => match others.iter().find(|(_, o)| o.mac_address().ok().as_deref() == Some(mac.as_str())) {
            Some((host, o)) => out.push(Check::fail("mac", format!("{mac} is the MAC of partition {} on {host}", o.name))),
            None => out.push(Check::pass("mac", format!("{mac} is used by no partition"))),
        },
    }
    out
}

/// Checks that the memory and CPU limits of `spec` fit what host `host`
/// allows now (its [`Headroom`]). A partition without a limit passes: it
/// takes what is free.
pub fn fits(spec: &PartitionSpec, host: &str, room: &Headroom) -> Vec<Check> {
    let mut out = Vec::new();
    match spec.memory {
        None => out.push(Check::pass("memory", format!("no limit; {host} has {} MiB free ({})", room.memory >> 20, room.memory_bound))),
        Some(m) if m > room.memory => out
            .push(Check::fail("memory", format!("{} MiB asked; {host} allows {} MiB ({})", m >> 20, room.memory >> 20, room.memory_bound))),
        Some(m) => out.push(Check::pass("memory", format!("{} MiB of {} MiB free on {host}", m >> 20, room.memory >> 20))),
    }
    match spec.cpus {
        None => out.push(Check::pass("cpus", format!("no limit; {host} allows {} CPUs ({})", room.cpus, room.cpus_bound))),
        Some(c) if c > room.cpus => {
            out.push(Check::fail("cpus", format!("{c} CPUs asked; {host} allows {} ({})", room.cpus, room.cpus_bound)))
        }
        Some(c) => out.push(Check::pass("cpus", format!("{c} of the {} CPUs {host} allows", room.cpus))),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, ip: Option<&str>, mac: Option<&str>) -> PartitionSpec {
        PartitionSpec {
            name: name.into(),
            command: vec!["sh".into()],
            memory: None,
            cpus: None,
            rt_runtime_us: None,
            ip: ip.map(String::from),
            mac: mac.map(String::from),
            volumes: vec![],
            isolation: Default::default(),
        }
    }

    fn failed(checks: &[Check]) -> Vec<(&str, &str)> {
        checks.iter().filter(|c| !c.ok).map(|c| (c.name.as_str(), c.detail.as_str())).collect()
    }

    #[test]
    fn clashes_name_the_other_partition_and_host() {
        let web = spec("web", Some("10.213.1.10/24"), None);
        let others = vec![("h1".to_string(), web.clone())];
        assert!(failed(&uniqueness(&spec("db", Some("10.213.1.11/24"), None), &others)).is_empty());
        assert_eq!(
            failed(&uniqueness(&spec("web", Some("10.213.1.11/24"), None), &others)),
            vec![
                ("name", "a partition named web exists on h1"),
                ("mac", &*format!("{} is the MAC of partition web on h1", web.mac_address().unwrap()))
            ]
        );
        // The same address under another prefix length is the same address.
        assert_eq!(
            failed(&uniqueness(&spec("db", Some("10.213.1.10/16"), None), &others)),
            vec![("ip", "10.213.1.10 is the address of partition web on h1")]
        );
        // A given MAC equal to one derived from a name clashes too.
        let derived = web.mac_address().unwrap();
        assert_eq!(failed(&uniqueness(&spec("db", None, Some(&derived)), &others))[0].0, "mac");
    }

    #[test]
    fn limits_fit_the_headroom() {
        let room =
            Headroom { memory: 300 << 20, memory_bound: "memory.max of x".into(), cpus: 2.0, cpus_bound: "the 2 online CPUs".into() };
        let mut s = spec("a", None, None);
        assert!(failed(&fits(&s, "h1", &room)).is_empty());
        s.memory = Some(512 << 20);
        s.cpus = Some(2.5);
        assert_eq!(
            failed(&fits(&s, "h1", &room)),
            vec![
                ("memory", "512 MiB asked; h1 allows 300 MiB (memory.max of x)"),
                ("cpus", "2.5 CPUs asked; h1 allows 2 (the 2 online CPUs)")
            ]
        );
        s.memory = Some(300 << 20);
        s.cpus = Some(2.0);
        assert!(failed(&fits(&s, "h1", &room)).is_empty());
    }
}
