//! A partition on one host: its spec, its plumbing (network namespace, veth
//! NIC on the host's partition bridge, cgroup) and its init process.
//!
//! The plumbing outlives the init: a migration target builds it first (with
//! the link down), the engine restores the tree into it, and only the
//! handover brings the link up and announces the address. A partition
//! started fresh gets its init from [`start`]: pid 1 of new pid, mount, uts
//! and ipc namespaces, inside the partition's network namespace and cgroup.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lpm_sys::spawn::{self, PartitionExec, SpawnError};
use serde::{Deserialize, Serialize};

use crate::cgroup::{Cgroup, CgroupError, Headroom, Layout, Limits};
use crate::hold::{self, Hold};
use crate::isolation::Isolation;
use crate::net::{self, NetError, Netns};

/// The partition's interface inside its network namespace.
pub const IFNAME: &str = "eth0";
/// The nftables table of [`Plumbing::refuse_new_connections`].
const DRAIN_TABLE: &str = "lpm-drain";
/// Longest partition name.
pub const NAME_MAX: usize = 32;
/// The smallest memory limit a partition may have. A shell needs under
/// 1 MiB to start, python3 (what the demo and the tests run) 13 MiB from
/// a cold page cache (measured on this machine: the interpreter and its
/// libraries are charged to the first cgroup that reads them); with less
/// the init is OOM-killed as it starts, and the restore of a migration
/// fills pages into the same limit. A smaller value is more likely a
/// unit mistaken (`--memory 16` is 16 bytes) than a wish.
pub const MIN_MEMORY: u64 = 16 << 20;
/// How long [`stop`] waits for the tree to vanish after the forced kill.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of the partition runtime; each names the partition (or the spec
/// field) and the step.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// A spec field is invalid.
    #[error("partition spec field {field} ({value:?}): {why}")]
    Spec {
        /// The field.
        field: &'static str,
        /// Its value as given.
        value: String,
        /// What is wrong.
        why: String,
    },
    /// A network step failed.
    #[error("partition {partition}: {op}")]
    Net {
        /// The partition.
        partition: String,
        /// The step.
        op: &'static str,
        /// The cause (boxed: `NetError` is large).
        #[source]
        source: Box<NetError>,
    },
    /// A cgroup step failed.
    #[error("partition {partition}: {op}")]
    Cgroup {
        /// The partition.
        partition: String,
        /// The step.
        op: &'static str,
        /// The cause.
        #[source]
        source: CgroupError,
    },
    /// A file step failed.
    #[error("partition {partition}: {op} {path}")]
    Io {
        /// The partition.
        partition: String,
        /// The step.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Creating the init failed.
    #[error("partition {partition}: start init")]
    Spawn {
        /// The partition.
        partition: String,
        /// The cause.
        #[source]
        source: SpawnError,
    },
    /// Signalling the init failed.
    #[error("partition {partition}: signal init pid {pid}")]
    Signal {
        /// The partition.
        partition: String,
        /// The init.
        pid: i32,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Result alias for this module.
pub type Result<T, E = PartitionError> = std::result::Result<T, E>;

/// What a partition is: the profile that travels with it between hosts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionSpec {
    /// Unique name: `[a-z0-9-]`, 1 to [`NAME_MAX`] characters. Also the host
    /// name inside the partition.
    pub name: String,
    /// The init's argv; argv\[0\] is looked up in the standard PATH.
    pub command: Vec<String>,
    /// Memory limit in bytes, at least [`MIN_MEMORY`].
    #[serde(default)]
    pub memory: Option<u64>,
    /// CPU limit in CPUs.
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Real-time budget: microseconds of every second (the kernel's
    /// real-time period) the partition's SCHED_FIFO and SCHED_RR threads
    /// may run. Without one no thread of the partition can be made
    /// real-time where the kernel budgets real-time time per cgroup
    /// (cgroup v1's `cpu` controller here).
    #[serde(default)]
    pub rt_runtime_us: Option<u64>,
    /// IPv4 address with prefix length of eth0, e.g. "10.213.1.10/24".
    #[serde(default)]
    pub ip: Option<String>,
    /// MAC of eth0; when absent one is derived from the name (so it is the
    /// same on every host).
    #[serde(default)]
    pub mac: Option<String>,
    /// Directories on shared storage the partition uses.
    #[serde(default)]
    pub volumes: Vec<PathBuf>,
    /// How it is kept from its host (capabilities beyond the default set).
    #[serde(default)]
    pub isolation: Isolation,
}

impl PartitionSpec {
    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field, value: &str, why: &str| PartitionError::Spec { field, value: value.to_string(), why: why.to_string() };
        if self.name.is_empty() || self.name.len() > NAME_MAX {
            return Err(bad("name", &self.name, &format!("want 1 to {NAME_MAX} characters")));
        }
        if !self.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(bad("name", &self.name, "only a-z, 0-9 and '-' are allowed"));
        }
        match self.command.first() {
            None => return Err(bad("command", "", "empty")),
            Some(p) if p.is_empty() => return Err(bad("command", "", "empty program name")),
            _ => {}
        }
        if let Some(a) = self.command.iter().find(|a| a.contains('\0')) {
            return Err(bad("command", a, "contains a NUL byte"));
        }
        if let Some(m) = self.memory.filter(|&m| m < MIN_MEMORY) {
            return Err(bad(
                "memory",
                &m.to_string(),
                &format!("a partition needs at least {} MiB to start (its init and, at a migration, its restore)", MIN_MEMORY >> 20),
            ));
        }
        if let Some(c) = self.cpus {
            if !c.is_finite() || c < 0.01 {
                return Err(bad("cpus", &c.to_string(), "want a number of CPUs of at least 0.01"));
            }
        }
        if let Some(us) = self.rt_runtime_us {
            // The kernel keeps 5 % of every second from real-time threads
            // (sched_rt_runtime_us 950000 by default): never more.
            if us == 0 || us > 950_000 {
                return Err(bad("rt_runtime_us", &us.to_string(), "want 1 to 950000 microseconds of each second"));
            }
        }
        self.ipv4()?;
        self.mac_address()?;
        if let Err(why) = self.isolation.caps() {
            return Err(bad("cap_add", &self.isolation.cap_add.join(","), &why));
        }
        // first 0: the host that creates the partition picks its range.
        if let Some(ns) = self.isolation.userns.filter(|ns| ns.first != 0) {
            if let Err(why) = ns.validate() {
                return Err(bad("userns", &ns.first.to_string(), &why));
            }
        }
        for v in &self.volumes {
            let shown = v.display().to_string();
            if !v.is_absolute() {
                return Err(bad("volumes", &shown, "want an absolute path"));
            }
            match fs::metadata(v) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(bad("volumes", &shown, "not a directory")),
                Err(e) => return Err(bad("volumes", &shown, &format!("cannot be read: {e}"))),
            }
        }
        Ok(())
    }

    /// eth0's address and prefix length, if the spec has one.
    pub fn ipv4(&self) -> Result<Option<(Ipv4Addr, u8)>> {
        let Some(s) = &self.ip else { return Ok(None) };
        let bad = |why: &str| PartitionError::Spec { field: "ip", value: s.clone(), why: why.to_string() };
        let (a, _) = s.split_once('/').ok_or_else(|| bad("want ADDRESS/PREFIX, e.g. 10.213.1.10/24"))?;
        let net: ipnet::Ipv4Net = s.parse().map_err(|_| {
            if a.parse::<Ipv4Addr>().is_err() {
                bad("not an IPv4 address")
            } else {
                bad("prefix length must be 1 to 32")
            }
        })?;
        let (addr, prefix) = (net.addr(), net.prefix_len());
        if prefix == 0 {
            return Err(bad("prefix length must be 1 to 32"));
        }
        if addr.is_unspecified() || addr.is_multicast() || addr.is_broadcast() || addr.is_loopback() {
            return Err(bad("not a unicast host address"));
        }
        Ok(Some((addr, prefix)))
    }

    /// eth0's MAC as `aa:bb:cc:dd:ee:ff`: the given one, or a locally
    /// administered unicast one derived from the name.
    pub fn mac_address(&self) -> Result<String> {
        let Some(s) = &self.mac else {
            let h = fnv1a(self.name.as_bytes()).to_be_bytes();
            return Ok(format_mac(&[0x02, h[0], h[1], h[2], h[3], h[4]]));
        };
        let bad = |why: &str| PartitionError::Spec { field: "mac", value: s.clone(), why: why.to_string() };
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 || parts.iter().any(|p| p.len() != 2) {
            return Err(bad("want six hex octets separated by ':'"));
        }
        let mut b = [0u8; 6];
        for (o, p) in b.iter_mut().zip(&parts) {
            *o = u8::from_str_radix(p, 16).map_err(|_| bad("not hexadecimal"))?;
        }
        if b[0] & 1 != 0 {
            return Err(bad("a multicast address"));
        }
        if b == [0; 6] {
            return Err(bad("the zero address"));
        }
        Ok(format_mac(&b))
    }
}

fn format_mac(b: &[u8; 6]) -> String {
    b.iter().map(|o| format!("{o:02x}")).collect::<Vec<_>>().join(":")
}

/// FNV-1a 64: a hash that is the same on every host and every build, for
/// names derived from names.
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The host a partition runs on, and the names derived from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostCtx {
    /// The host's name.
    pub host: String,
    /// The host's state directory.
    pub dir: PathBuf,
    /// The partition bridge in the host's network namespace.
    pub bridge: String,
    /// Unique per lab (or installation), e.g. "lpm-ab12": keeps the names of
    /// concurrent labs apart.
    pub prefix: String,
}

impl HostCtx {
    /// The partition's network namespace: `{prefix}-{host}-{name}`.
    pub fn netns_name(&self, name: &str) -> String {
        format!("{}-{}-{}", self.prefix, self.host, name)
    }

    /// The partition's cgroup: `{prefix}/{host}/{name}`.
    pub fn cgroup_rel(&self, name: &str) -> String {
        format!("{}/{}/{}", self.prefix, self.host, name)
    }

    /// The cgroup holding every partition of this host, `{prefix}/{host}`.
    pub fn host_cgroup_rel(&self) -> String {
        format!("{}/{}", self.prefix, self.host)
    }

    /// What this host's cgroups and the machine allow a new partition
    /// ([`crate::cgroup::Headroom`]): the limits of
    /// [`HostCtx::host_cgroup_rel`] and each of its ancestors, minus their
    /// usage, and MemAvailable; the CPU limits of the same cgroups and the
    /// online CPUs. Works on both cgroup layouts.
    pub fn headroom(&self) -> Result<Headroom, CgroupError> {
        Layout::current()?.headroom(&self.host_cgroup_rel())
    }

    /// The host-side veth: `lp` and 8 hex digits of a hash of the
    /// partition's netns name (unique per lab, host and partition; an
    /// interface name has at most 15 characters).
    pub fn veth_name(&self, name: &str) -> String {
        format!("lp{:08x}", fnv1a(self.netns_name(name).as_bytes()) as u32)
    }

    /// The partition's state directory, `{dir}/partitions/{name}`.
    pub fn partition_dir(&self, name: &str) -> PathBuf {
        self.dir.join("partitions").join(name)
    }

    /// Where the init's stdout and stderr go.
    pub fn console_log(&self, name: &str) -> PathBuf {
        self.partition_dir(name).join("console.log")
    }
}

/// A partition's network namespace, NIC and cgroup on this host.
#[derive(Debug)]
pub struct Plumbing {
    name: String,
    netns: Netns,
    veth: String,
    ip: Option<Ipv4Addr>,
    mac: String,
    cgroup: Cgroup,
    /// The bridge the host end joins when the network is unlocked.
    bridge: String,
}

impl Plumbing {
    /// Builds the plumbing for `spec`: the network namespace, a veth pair
    /// whose host end (in the caller's network namespace) joins
    /// `ctx.bridge` and whose other end is the partition's eth0 with the
    /// spec's MAC and address, lo up, and the cgroup with the spec's
    /// limits. The host end is up only if `link_up`. On failure nothing is
    /// left behind.
    pub fn create(ctx: &HostCtx, spec: &PartitionSpec, link_up: bool) -> Result<Plumbing> {
        spec.validate()?;
        let name = spec.name.clone();
        let ns_name = ctx.netns_name(&name);
        let veth = ctx.veth_name(&name);
        let mac = spec.mac_address()?;
        let ip = spec.ipv4()?;
        let net_err = |op| {
            let partition = name.clone();
            move |source| PartitionError::Net { partition, op, source: Box::new(source) }
        };
        let cgroup =
            Cgroup::create(&ctx.cgroup_rel(&name), Limits { memory: spec.memory, cpus: spec.cpus, rt_runtime_us: spec.rt_runtime_us })
                .map_err(|source| PartitionError::Cgroup { partition: name.clone(), op: "create cgroup", source })?;
        let netns = match Netns::create(&ns_name) {
            Ok(n) => n,
            Err(source) => {
                let _ = cgroup.remove();
                return Err(PartitionError::Net { partition: name, op: "create network namespace", source: Box::new(source) });
            }
        };
        let p = Plumbing { name: name.clone(), netns, veth, ip: ip.map(|(a, _)| a), mac, cgroup, bridge: ctx.bridge.clone() };
        let r = (|| {
            p.filter_devices()?;
            // The peer is born inside the partition's namespace under its
            // final name: no rename, no clash with other partitions' eth0.
            let mac = hold::parse_mac(&p.mac).ok_or_else(|| PartitionError::Spec {
                field: "mac",
                value: p.mac.clone(),
                why: "not six hex octets".into(),
            })?;
            let fd = p.netns.fd().map_err(net_err("open the network namespace"))?;
            net::rtnl(None, &p.veth, "create veth pair", |r| r.add_veth(&p.veth, IFNAME, Some(mac), Some(fd.as_fd())))
                .map_err(net_err("create veth pair"))?;
            net::rtnl(None, &p.veth, "bring up", |r| r.set_up(&p.veth)).map_err(net_err("bring the host end up"))?;
            net::rtnl(Some(&p.netns), "lo", "bring up", |r| r.set_up("lo")).map_err(net_err("bring lo up"))?;
            if let Some((addr, prefix)) = ip {
                net::rtnl(Some(&p.netns), IFNAME, "add an address", |r| r.add_address(IFNAME, addr, prefix))
                    .map_err(net_err("add the address to eth0"))?;
            }
            net::rtnl(Some(&p.netns), IFNAME, "bring up", |r| r.set_up(IFNAME)).map_err(net_err("bring eth0 up"))?;
            // The kernel's link watch sets eth0's operational state UP, and
            // announces it (RTM_NEWLINK), up to a second later. Waited for
            // here, so that the announcement reaches no netlink socket of
            // the partition's program: one with an unread message cannot
            // be migrated.
            if !net::wait_oper_up(&p.netns, IFNAME, Duration::from_secs(2)).map_err(net_err("read eth0's state"))? {
                tracing::warn!(partition = %name, "eth0 is not UP after 2 s");
            }
            if link_up {
                p.unlock_network()?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => {
                tracing::info!(partition = %name, netns = %ns_name, veth = %p.veth, "plumbing created");
                Ok(p)
            }
            Err(e) => {
                if let Err(e2) = p.destroy() {
                    tracing::warn!(partition = %name, error = %e2, "cleanup after failed plumbing");
                }
                Err(e)
            }
        }
    }

    /// The existing plumbing of `spec` on this host.
    pub fn open(ctx: &HostCtx, spec: &PartitionSpec) -> Result<Plumbing> {
        let name = spec.name.clone();
        let netns = Netns::open(&ctx.netns_name(&name)).map_err(|source| PartitionError::Net {
            partition: name.clone(),
            op: "open network namespace",
            source: Box::new(source),
        })?;
        let cgroup = Cgroup::open(&ctx.cgroup_rel(&name)).map_err(|source| PartitionError::Cgroup {
            partition: name.clone(),
            op: "open cgroup",
            source,
        })?;
        let veth = ctx.veth_name(&name);
        let found = net::rtnl(None, &veth, "look up", |r| r.link(&veth)).and_then(|l| {
            l.ok_or_else(|| NetError::Netlink { ifname: veth.clone(), op: "look up", source: io::Error::from_raw_os_error(libc::ENODEV) })
        });
        found.map_err(|source| PartitionError::Net { partition: name.clone(), op: "find host-side veth", source: Box::new(source) })?;
        Ok(Plumbing { name, netns, veth, ip: spec.ipv4()?.map(|(a, _)| a), mac: spec.mac_address()?, cgroup, bridge: ctx.bridge.clone() })
    }

    /// Lets the partition's processes open only the usual character
    /// devices (lpm_sys::devices): a device filter on its cgroup2
    /// directory, made with the cgroup and again at every start (a killed
    /// partition's cgroup is replaced).
    pub fn filter_devices(&self) -> Result<()> {
        let dir = self.cgroup.v2_dir();
        let io_err = |op| {
            let (partition, path) = (self.name.clone(), dir.clone());
            move |source| PartitionError::Io { partition, op, path, source }
        };
        let fd = File::open(&dir).map_err(io_err("open cgroup directory"))?;
        lpm_sys::devices::allow_usual_devices(fd.as_fd()).map_err(io_err("attach the device filter to"))
    }

    /// The partition's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The partition's network namespace.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// The partition's cgroup.
    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    /// The host-side veth (a port of the host's partition bridge).
    pub fn veth(&self) -> &str {
        &self.veth
    }

    /// eth0's MAC.
    pub fn mac(&self) -> &str {
        &self.mac
    }

    /// eth0's IPv4 address, if any.
    pub fn ip(&self) -> Option<Ipv4Addr> {
        self.ip
    }

    fn net_err(&self, op: &'static str) -> impl FnOnce(NetError) -> PartitionError + '_ {
        move |source| PartitionError::Net { partition: self.name.clone(), op, source: Box::new(source) }
    }

    /// Cuts the partition off the network: the host-side veth leaves the
    /// bridge, so no packet reaches or leaves the partition.
    pub fn lock_network(&self) -> Result<()> {
        // Off the bridge rather than down: the link stays up, so the
        // partition's own view (carrier, and the netlink events a change
        // of it would send into its namespace) does not move.
        net::set_master(&self.veth, None).map_err(self.net_err("lock network (veth off the bridge)"))
    }

    /// Stops new TCP connections from reaching the partition while its
    /// established ones go on: an nftables table of lpm's in the
    /// partition's namespace drops every connection request (SYN without
    /// ACK) arriving on eth0; the client retransmits it (after 1 s at
    /// first), by then to wherever the partition runs. A migration's stop
    /// without a hold port (crate::hold, which holds the requests
    /// instead) sets it first, so that no handshake is left half done (SYN_RECV)
    /// when the network is locked, which no restore could carry over.
    /// The rules live in the partition's own namespace: they go with it
    /// when it is destroyed, and never reach the target's.
    pub fn refuse_new_connections(&self) -> Result<()> {
        let script = format!(
            "table inet {DRAIN_TABLE} {{}}\ndelete table inet {DRAIN_TABLE}\ntable inet {DRAIN_TABLE} {{\n  chain syn {{\n    type filter hook input priority -300; policy accept;\n    iifname \"{IFNAME}\" tcp flags & (syn | ack) == syn drop\n  }}\n}}\n"
        );
        net::nft(self.netns.name(), &script).map_err(self.net_err("refuse new connections (nft)"))
    }

    /// Undoes [`Plumbing::refuse_new_connections`]; nothing to do when the
    /// rules are not there, so it may be repeated.
    pub fn admit_new_connections(&self) -> Result<()> {
        let script = format!("table inet {DRAIN_TABLE} {{}}\ndelete table inet {DRAIN_TABLE}\n");
        net::nft(self.netns.name(), &script).map_err(self.net_err("admit new connections (nft)"))
    }

    /// Builds the partition's hold port (crate::hold), for a migration's
    /// stop to hold the frames sent to the partition while it is stopped.
    pub fn hold(&self) -> Result<Hold> {
        let mac = hold::parse_mac(&self.mac).ok_or_else(|| PartitionError::Spec {
            field: "mac",
            value: self.mac.clone(),
            why: "not six hex octets".into(),
        })?;
        Hold::prepare(&self.veth, &self.bridge, mac).map_err(self.net_err("build the hold port"))
    }

    /// Removes the partition's hold port, if any (its frames, if the
    /// lpmd that held them died, are gone).
    pub fn remove_hold(&self) -> Result<()> {
        hold::remove_port(&self.veth).map_err(self.net_err("remove the hold port"))
    }

    /// Reconnects the partition: the host-side veth joins the bridge again.
    pub fn unlock_network(&self) -> Result<()> {
        net::set_master(&self.veth, Some(&self.bridge)).map_err(self.net_err("unlock network (veth on the bridge)"))
    }

    /// Announces eth0's address from its MAC (gratuitous ARP), so switches
    /// and neighbours learn where the partition now is. Without an address
    /// there is nothing to announce.
    pub fn announce(&self) -> Result<()> {
        if let Some(ip) = self.ip {
            net::gratuitous_arp(self.netns.name(), IFNAME, ip).map_err(self.net_err("announce address"))?;
        }
        Ok(())
    }

    /// Announces eth0's address once, at once: a migration's target does
    /// so before it tells the source that its copy runs, so that what the
    /// source held for the partition then finds the way here.
    pub fn announce_once(&self) -> Result<()> {
        if let Some(ip) = self.ip {
            net::gratuitous_arp_rounds(self.netns.name(), IFNAME, ip, 1).map_err(self.net_err("announce address"))?;
        }
        Ok(())
    }

    /// An announcement of eth0's address made ready ahead
    /// (lpm_sys::arp::Announcer): a migration's target sends it in the
    /// stop, where [`Plumbing::announce_once`] would open and close a
    /// socket. None for a partition without an address.
    pub fn announcer(&self) -> Result<Option<lpm_sys::arp::Announcer>> {
        let Some(ip) = self.ip else { return Ok(None) };
        let fd = self.netns.fd().map_err(self.net_err("open the network namespace"))?;
        lpm_sys::arp::Announcer::open(fd.as_fd(), IFNAME, ip)
            .map(Some)
            .map_err(|source| NetError::Arp { ns: self.netns.name().to_string(), ifname: IFNAME.to_string(), ip, source })
            .map_err(self.net_err("prepare the announcement"))
    }

    /// Removes everything: kills what runs in the cgroup and removes it,
    /// deletes the veth pair and the network namespace. Parts already gone
    /// are fine, so this may be repeated.
    pub fn destroy(&self) -> Result<()> {
        self.cgroup.remove().map_err(|source| PartitionError::Cgroup { partition: self.name.clone(), op: "remove cgroup", source })?;
        self.remove_hold()?;
        // Gone already (with its namespace, say): nothing to delete.
        net::rtnl(None, &self.veth, "delete", |r| r.delete(&self.veth)).map_err(self.net_err("delete veth"))?;
        Netns::delete(self.netns.name()).map_err(self.net_err("delete network namespace"))?;
        tracing::info!(partition = %self.name, "plumbing destroyed");
        Ok(())
    }
}

/// The environment of a partition's init.
fn init_env(spec: &PartitionSpec) -> Vec<String> {
    vec![format!("PATH={}", spawn::DEFAULT_PATH), "HOME=/".to_string(), format!("LPM_PARTITION={}", spec.name)]
}

/// Starts the partition's init in its plumbing: pid 1 of new pid, mount,
/// uts and ipc namespaces, host name = partition name, stdout and stderr
/// appended to [`HostCtx::console_log`], stdin /dev/null, cwd /. Returns its
/// pid in the caller's pid namespace. The caller reaps it (lpmd is a child
/// subreaper).
pub fn start(ctx: &HostCtx, spec: &PartitionSpec, plumbing: &Plumbing) -> Result<i32> {
    start_hiding(ctx, spec, plumbing, &[])
}

/// [`start`], with `hide` (host paths: lpm's state, keys, sockets) hidden
/// in the partition's mount namespace ([`crate::isolation::masks`]).
pub fn start_hiding(ctx: &HostCtx, spec: &PartitionSpec, plumbing: &Plumbing, hide: &[PathBuf]) -> Result<i32> {
    spec.validate()?;
    let name = spec.name.as_str();
    let io_err = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| PartitionError::Io { partition: name.to_string(), op, path, source }
    };
    let dir = ctx.partition_dir(name);
    fs::create_dir_all(&dir).map_err(io_err("create directory", &dir))?;
    let log_path = ctx.console_log(name);
    let log = OpenOptions::new().create(true).append(true).open(&log_path).map_err(io_err("open console log", &log_path))?;
    let null = File::open("/dev/null").map_err(io_err("open", Path::new("/dev/null")))?;
    let netns = plumbing.netns.fd().map_err(plumbing.net_err("open network namespace"))?;
    let v2_dir = plumbing.cgroup.v2_dir();
    let cg = File::open(&v2_dir).map_err(io_err("open cgroup directory", &v2_dir))?;
    let cstr = |field, s: &str| {
        CString::new(s).map_err(|_| PartitionError::Spec { field, value: s.to_string(), why: "contains a NUL byte".into() })
    };
    let exec = PartitionExec {
        argv: spec.command.iter().map(|a| cstr("command", a)).collect::<Result<_>>()?,
        envp: init_env(spec).iter().map(|e| cstr("environment", e)).collect::<Result<_>>()?,
        cwd: cstr("cwd", "/")?,
        hostname: cstr("name", name)?,
        netns: netns.as_fd(),
        cgroup_v2: Some(cg.as_fd()),
        stdin: null.as_fd(),
        stdout: log.as_fd(),
        stderr: log.as_fd(),
        masks: crate::isolation::masks_c(hide),
        caps: Some(spec.isolation.caps().map_err(|why| PartitionError::Spec {
            field: "cap_add",
            value: spec.isolation.cap_add.join(","),
            why,
        })?),
        userns: match spec.isolation.userns {
            None => None,
            Some(ns) => {
                ns.validate().map_err(|why| PartitionError::Spec { field: "userns", value: ns.first.to_string(), why })?;
                Some(ns.id_map())
            }
        },
    };
    plumbing.filter_devices()?;
    let spawn_err = |source| PartitionError::Spawn { partition: name.to_string(), source };
    let child = spawn::spawn_partition(&exec).map_err(spawn_err)?;
    // Born in the cgroup2 directory; the v1 hierarchies (hybrid layout)
    // need the pid written before the init runs anything.
    plumbing.cgroup.add(child.pid()).map_err(|source| PartitionError::Cgroup {
        partition: name.to_string(),
        op: "add init to cgroup",
        source,
    })?;
    let pid = child.go().map_err(spawn_err)?;
    tracing::info!(partition = %name, pid, "partition started");
    Ok(pid)
}

/// Stops a partition: SIGTERM to its init `pid`, and if the cgroup still
/// holds processes after `timeout`, kills them all (and then replaces the
/// cgroup by a new one with the same limits, so that [`start`] can clone
/// an init into it). Returns once the cgroup is empty: true when SIGTERM
/// sufficed. (An init that is pid 1 of its
/// namespace gets SIGTERM only if it handles it; when it exits the kernel
/// kills the rest of its namespace.) The caller reaps the init.
pub fn stop(pid: i32, plumbing: &Plumbing, timeout: Duration) -> Result<bool> {
    let name = plumbing.name.clone();
    let cg_err = |op| {
        let partition = name.clone();
        move |source| PartitionError::Cgroup { partition, op, source }
    };
    let rpid = rustix::process::Pid::from_raw(pid).ok_or_else(|| PartitionError::Signal {
        partition: name.clone(),
        pid,
        source: io::Error::from_raw_os_error(libc::ESRCH),
    })?;
    // A frozen init could not act on SIGTERM.
    if plumbing.cgroup.frozen().map_err(cg_err("read freezer state"))? {
        plumbing.cgroup.thaw(KILL_TIMEOUT).map_err(cg_err("thaw"))?;
    }
    match rustix::process::kill_process(rpid, rustix::process::Signal::TERM) {
        Ok(()) => {}
        Err(e) if e == rustix::io::Errno::SRCH => {}
        Err(e) => return Err(PartitionError::Signal { partition: name, pid, source: e.into() }),
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !plumbing.cgroup.populated().map_err(cg_err("read cgroup events"))? {
            tracing::info!(partition = %name, pid, "partition stopped on SIGTERM");
            return Ok(true);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    plumbing.cgroup.kill().map_err(cg_err("kill cgroup"))?;
    plumbing.cgroup.wait_empty(KILL_TIMEOUT).map_err(cg_err("wait for the killed tree"))?;
    // A killed cgroup would kill the next init at birth (see
    // Cgroup::kill): the next start gets a new one.
    plumbing.cgroup.recreate().map_err(cg_err("recreate the killed cgroup"))?;
    tracing::info!(partition = %name, pid, "partition killed after {timeout:?}");
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names() {
        let ctx = HostCtx { host: "h1".into(), dir: "/tmp/x".into(), bridge: "lpmbr0".into(), prefix: "lpm-ab12".into() };
        assert_eq!(ctx.netns_name("web"), "lpm-ab12-h1-web");
        assert_eq!(ctx.cgroup_rel("web"), "lpm-ab12/h1/web");
        let v = ctx.veth_name("web");
        assert_eq!(v.len(), 10);
        assert!(v.starts_with("lp"));
        assert_ne!(v, ctx.veth_name("db"));
        assert_eq!(ctx.console_log("web"), PathBuf::from("/tmp/x/partitions/web/console.log"));
    }

    #[test]
    fn generated_mac_is_stable_local_unicast() {
        let s = PartitionSpec {
            name: "web".into(),
            command: vec!["sh".into()],
            memory: None,
            cpus: None,
            rt_runtime_us: None,
            ip: None,
            mac: None,
            volumes: vec![],
            isolation: Default::default(),
        };
        let m = s.mac_address().unwrap();
        assert!(m.starts_with("02:"), "{m}");
        assert_eq!(m, s.mac_address().unwrap());
        let other = PartitionSpec { name: "db".into(), ..s.clone() };
        assert_ne!(m, other.mac_address().unwrap());
        let given = PartitionSpec { mac: Some("02:AA:bb:cc:dd:0e".into()), ..s };
        assert_eq!(given.mac_address().unwrap(), "02:aa:bb:cc:dd:0e");
    }
}
