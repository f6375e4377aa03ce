//! A lab: several hosts on one machine, for the demo and the tests
//! (`lpm lab up`, `lpm lab exec`, `lpm lab down`).
//!
//! Each host is a network namespace running its own `lpmd`; a `fabric`
//! namespace holds two bridges that play the data-centre switches, one for
//! the management network the hosts talk over and one for the partitions'
//! L2 segment; a `client` namespace plays the connected users:
//!
//! ```text
//!  lpm-ID-fabric   br-mgmt 10.213.0.0/24         br-part 10.213.1.0/24
//!                    |mg-h1     |mg-h2            |pt-h1   |pt-h2   |pt-client
//!  lpm-ID-h1       mgmt0 .0.11  |                uplink0   |        |
//!                               |             lpmbr0 (partitions)   |
//!  lpm-ID-h2                  mgmt0 .0.12               uplink0     |
//!                                                    lpmbr0 (partitions)
//!  lpm-ID-client                                                  eth0 .1.250
//! ```
//!
//! The fabric has an address of its own on the management network (`.0.2`):
//! the CLI connects from there to each lpmd's remote API (`.0.1N:7412`), as
//! from an operator's console, through the lab's hosts file (`hosts.toml`).
//!
//! Every namespace is named `lpm-ID-...` with a random ID, so labs do not
//! collide and [`Lab::down`] finds what belongs to a lab by name, also what
//! an `lpmd` created (it gets `--prefix lpm-ID`). The state file `lab.json`
//! is written before anything is created and updated as pieces appear, so
//! `down` cleans up after a crash at any point.
//!
//! Partition addresses come from the lab's subnet, `.10` to `.249`. The lab
//! keeps the allocation ([`Lab::allocate_ip`], [`Lab::release_ip`], under a
//! file lock); `lpmd` allocates nothing: whoever creates a partition in the
//! lab (the CLI, a test) takes an address here and passes it in the spec.
//! An address given explicitly is checked ([`Lab::check_ip`]) and recorded
//! too ([`Lab::reserve_ip`]), so the allocator never hands it out again;
//! deleting a partition gives its addresses back ([`Lab::release_owner`]).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::AgentConfig;
use crate::net::{self, NetError, Netns};

/// Where `lpm lab` keeps its lab unless told otherwise.
pub const DEFAULT_DIR: &str = "/run/lpm/lab";
/// The partitions' subnet unless told otherwise.
pub const DEFAULT_SUBNET: &str = "10.213.1.0/24";
/// The TCP port each `lpmd` listens on, on its management address.
pub const LPMD_PORT: u16 = 7411;
/// The most hosts a lab has (management addresses .11 to .18).
pub const MAX_HOSTS: usize = 8;
/// The partition bridge inside each host namespace.
pub const BRIDGE: &str = "lpmbr0";
/// The host's management interface.
pub const MGMT_IF: &str = "mgmt0";
/// The host's uplink from its partition bridge to the fabric.
pub const UPLINK_IF: &str = "uplink0";
/// The client's interface on the partition network.
pub const CLIENT_IF: &str = "eth0";
/// The management bridge in the fabric namespace.
pub const MGMT_BRIDGE: &str = "br-mgmt";
/// The partition-network bridge in the fabric namespace.
pub const PART_BRIDGE: &str = "br-part";
/// The state file inside the lab directory.
pub const STATE_FILE: &str = "lab.json";
/// How long [`Lab::up`] waits for each `lpmd`'s control socket.
pub const LPMD_START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Lab::down`] waits after SIGTERM before SIGKILL.
pub const LPMD_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The first and last host part of a partition address.
const PARTITION_IPS: std::ops::RangeInclusive<u8> = 10..=249;
/// The client's host part.
const CLIENT_HOST_PART: u8 = 250;
/// Version of `lab.json`.
const STATE_VERSION: u32 = 1;
const LOCK_FILE: &str = "lab.lock";
const KEY_FILE: &str = "key";
/// The lab's site PKI (its CA, a certificate per host, the operator's).
const PKI_DIR: &str = "pki";
/// The name of the lab's operator identity (the CLI's certificate).
pub const LAB_OPERATOR: &str = "lab";
/// Each host's lpmd configuration, in its directory.
const CONFIG_FILE: &str = "lpmd.toml";
/// The console's name in a lab.
pub const CONSOLE_NAME: &str = "console";
/// The port of a lab's console.
pub const CONSOLE_PORT: u16 = 7420;
/// The console's directory in the lab's.
const CONSOLE_DIR: &str = "console";
/// The host part of the fabric's address on the management network,
/// where the CLI's connections to the hosts come from.
const OPERATOR_HOST_PART: u8 = 2;

/// Errors of the lab; each names the directory, host or step.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// The lab's site PKI could not be made or read.
    #[error("lab PKI in {dir}")]
    Pki {
        /// The PKI directory.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: lpm_trust::TrustError,
    },
    /// The options are unusable.
    #[error("invalid lab options: {0}")]
    BadOptions(String),
    /// The directory already holds a lab.
    #[error("a lab is already up in {0}")]
    Exists(PathBuf),
    /// The directory exists and holds files that are not a lab's.
    #[error("lab directory {0} is not empty and holds no lab")]
    NotEmpty(PathBuf),
    /// There is no lab in the directory.
    #[error("no lab in {0}")]
    NotFound(PathBuf),
    /// A file operation failed.
    #[error("{op} {path}")]
    Io {
        /// The operation.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The state file is unreadable or inconsistent.
    #[error("lab state {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A step of building the network failed.
    #[error("lab {id}: {step}")]
    Net {
        /// The lab.
        id: String,
        /// The step.
        step: String,
        /// The cause (boxed: it is large and errors travel by value).
        #[source]
        source: Box<NetError>,
    },
    /// Starting a host's `lpmd` failed.
    #[error("starting `setsid {lpmd}` for host {host}")]
    Spawn {
        /// The host.
        host: String,
        /// The binary.
        lpmd: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A host's `lpmd` exited before it was ready.
    #[error("lpmd of host {host} exited ({status}) before creating its control socket; log tail:\n{log_tail}")]
    LpmdExited {
        /// The host.
        host: String,
        /// How it ended.
        status: ExitStatus,
        /// The last lines of its log.
        log_tail: String,
    },
    /// A host's `lpmd` did not create its control socket in time.
    #[error("lpmd of host {host} did not create {control} within {timeout:?}; log tail:\n{log_tail}")]
    LpmdTimeout {
        /// The host.
        host: String,
        /// The control socket.
        control: PathBuf,
        /// How long it was given.
        timeout: Duration,
        /// The last lines of its log.
        log_tail: String,
    },
    /// The name is neither a host of the lab nor `client` nor `fabric`.
    #[error("lab {id} has no member {name}")]
    NoMember {
        /// The lab.
        id: String,
        /// The name asked for.
        name: String,
    },
    /// Running a command in a member failed to start.
    #[error("running {cmd} in {member}")]
    Exec {
        /// The member.
        member: String,
        /// The program.
        cmd: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An address cannot be a partition's in this lab.
    #[error("lab {id}: address {ip} cannot be a partition's: {why}")]
    BadAddress {
        /// The lab.
        id: String,
        /// The address as given.
        ip: String,
        /// What it is instead (outside the partition network, its
        /// broadcast address, ...).
        why: String,
    },
    /// An address is recorded for another partition.
    #[error("lab {id}: address {ip} is taken by partition {owner}")]
    AddressTaken {
        /// The lab.
        id: String,
        /// The address.
        ip: Ipv4Addr,
        /// The partition holding it.
        owner: String,
    },
    /// Every partition address of the subnet is taken.
    #[error("lab {id}: no free partition address left in {subnet}/24")]
    NoFreeAddress {
        /// The lab.
        id: String,
        /// The subnet.
        subnet: Ipv4Addr,
    },
    /// Some pieces could not be removed; the state is kept so that `down`
    /// can run again.
    #[error("lab {id} in {dir} not fully removed: {}", .failures.join("; "))]
    Down {
        /// The lab.
        id: String,
        /// Its directory.
        dir: PathBuf,
        /// What failed, one entry per piece.
        failures: Vec<String>,
    },
}

/// What [`Lab::up`] builds.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// How many hosts, 1 to [`MAX_HOSTS`].
    pub hosts: usize,
    /// The partitions' subnet, an IPv4 `/24` whose third octet is not 0
    /// (the management network takes the same first two octets and 0).
    pub subnet: String,
    /// The `lpmd` binary started in each host.
    pub lpmd: PathBuf,
    /// Arguments put before the ones the lab passes to every `lpmd` (a
    /// subcommand, as in `lpm daemon`).
    pub lpmd_args: Vec<String>,
    /// Start every `lpmd` with `insecure = true`: movers without TLS, for
    /// measuring what encryption costs.
    pub insecure: bool,
    /// Start a console beside the hosts: the arguments that make the
    /// `lpmd` binary (`lpm`) one (`console serve`); None for no console.
    pub console_args: Option<Vec<String>>,
}

impl LabOptions {
    /// Two hosts on [`DEFAULT_SUBNET`] running `lpmd`.
    pub fn new(lpmd: impl Into<PathBuf>) -> LabOptions {
        LabOptions {
            hosts: 2,
            subnet: DEFAULT_SUBNET.to_string(),
            lpmd: lpmd.into(),
            lpmd_args: Vec::new(),
            insecure: false,
            console_args: None,
        }
    }
}

/// One host of a lab.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostInfo {
    /// `h1` .. `h8`.
    pub name: String,
    /// Its network namespace, `lpm-ID-hN`.
    pub netns: String,
    /// Its management address (on [`MGMT_IF`]).
    pub mgmt_addr: Ipv4Addr,
    /// Where its `lpmd` listens for other hosts.
    pub listen: SocketAddrV4,
    /// Where its `lpmd` serves the remote control API (absent in labs of
    /// an older lpm).
    #[serde(default)]
    pub api: Option<SocketAddrV4>,
    /// Its `lpmd`'s control socket.
    pub control: PathBuf,
    /// Its `lpmd`'s directory.
    pub dir: PathBuf,
    /// Its `lpmd`'s stdout and stderr.
    pub log: PathBuf,
    /// Its `lpmd`'s pid, once started.
    pub pid: Option<i32>,
    /// The start time of that pid (field 22 of /proc/PID/stat), so that a
    /// recycled pid is never signalled.
    pub pid_start: Option<u64>,
}

/// The client of a lab: the connected users.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClientInfo {
    /// Its network namespace, `lpm-ID-client`.
    pub netns: String,
    /// Its interface on the partition network.
    pub ifname: String,
    /// Its address there (`.250` of the subnet).
    pub addr: Ipv4Addr,
}

/// The lab's console, when `up` started one: its own process in the
/// fabric namespace, on the management network beside the CLI's seat.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConsoleInfo {
    /// Its name (its certificate's).
    pub name: String,
    /// Where it listens.
    pub addr: SocketAddrV4,
    /// Its directory (configuration, database, log).
    pub dir: PathBuf,
    /// Its configuration file.
    pub config: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
    /// The arguments that make the lab's binary a console.
    pub args: Vec<String>,
    /// Its pid, once started.
    pub pid: Option<i32>,
    /// The start time of that pid.
    pub pid_start: Option<u64>,
}

/// `lab.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct State {
    version: u32,
    id: String,
    dir: PathBuf,
    /// The partitions' network (a /24).
    subnet: Ipv4Addr,
    /// The management network (a /24).
    mgmt: Ipv4Addr,
    /// The fabric namespace.
    fabric: String,
    /// Every namespace `up` will create, written before the first.
    planned: Vec<String>,
    /// The namespaces created so far.
    created: Vec<String>,
    hosts: Vec<HostInfo>,
    client: ClientInfo,
    /// Set when every `lpmd` is ready.
    ready: bool,
    /// Partition addresses handed out, with their owner.
    #[serde(default)]
    addresses: BTreeMap<Ipv4Addr, String>,
    /// The `lpmd` binary `up` started, for [`Lab::restart`].
    #[serde(default)]
    lpmd: Option<PathBuf>,
    /// The arguments put before the lab's ones (`daemon`).
    #[serde(default)]
    lpmd_args: Vec<String>,
    /// Its `lpmd`s run their movers without TLS.
    #[serde(default)]
    insecure: bool,
    /// Its console, when it has one.
    #[serde(default)]
    console: Option<ConsoleInfo>,
}

impl State {
    fn prefix(&self) -> String {
        format!("lpm-{}", self.id)
    }
}

/// A lab that is up (or partly up: see [`Lab::down`]).
#[derive(Clone, Debug)]
pub struct Lab {
    dir: PathBuf,
    state: State,
}

impl Lab {
    /// Builds a lab in state directory `dir` (which must be missing or
    /// empty): namespaces, bridges, links, addresses, the pre-shared key,
    /// and one `lpmd` per host, started in the host's namespace in a session
    /// of its own with
    /// `--host hN --dir DIR/hN --listen MGMT:7411 --key DIR/key
    /// --control DIR/hN/lpmd.sock --bridge lpmbr0 --prefix lpm-ID` and
    /// `opts.lpmd_args`, its output in `DIR/hN/lpmd.log`. Returns when every
    /// control socket exists. On failure it removes what it built
    /// ([`Lab::down`]) and returns the first error.
    pub fn up(dir: &Path, opts: &LabOptions) -> Result<Lab, LabError> {
        let (subnet, mgmt) = check_options(opts)?;
        let dir = &prepare_dir(dir)?;
        match build(dir, opts, subnet, mgmt) {
            Ok(lab) => Ok(lab),
            Err(e) => {
                if let Err(de) = Lab::down(dir) {
                    tracing::error!(target: "lpm::lab", dir = %dir.display(), error = %de, "cleaning up a failed lab");
                }
                Err(e)
            }
        }
    }

    /// The lab in `dir`.
    pub fn load(dir: &Path) -> Result<Lab, LabError> {
        Ok(Lab { dir: dir.to_path_buf(), state: read_state(dir)? })
    }

    /// Removes the lab in `dir`: stops each `lpmd` (SIGTERM, SIGKILL after
    /// [`LPMD_STOP_TIMEOUT`]), kills whatever else runs in the lab's
    /// namespaces or cgroups, deletes every namespace named `lpm-ID-*`
    /// (with the links and bridges in them, and the partition namespaces
    /// an `lpmd` left behind), removes cgroups named `lpm-ID` or `lpm-ID-*`
    /// under every cgroup mount (deepest first), and last the directory.
    /// Idempotent; tolerates pieces that are missing. When a piece resists,
    /// it goes on with the others, keeps the state file and returns
    /// [`LabError::Down`] listing what is left.
    pub fn down(dir: &Path) -> Result<(), LabError> {
        let state = match read_state(dir) {
            Ok(s) => s,
            Err(LabError::NotFound(_)) => return remove_stateless_dir(dir),
            Err(e) => return Err(e),
        };
        let prefix = state.prefix();
        let mut failures = Vec::new();

        if let Some(c) = &state.console {
            stop_pids(&[c], &mut failures);
        }
        stop_lpmds(&state.hosts, &mut failures);

        let mut names: BTreeSet<String> = state.planned.iter().chain(&state.created).cloned().collect();
        match Netns::list() {
            Ok(all) => names.extend(all.into_iter().filter(|n| n.starts_with(&format!("{prefix}-")))),
            Err(e) => failures.push(format!("listing network namespaces: {e}")),
        }
        let cgroups = find_cgroups(&prefix, &mut failures);
        kill_members(&names, &cgroups, &mut failures);

        for name in &names {
            if let Err(e) = Netns::delete(name) {
                failures.push(e.to_string());
            }
        }
        for cg in &cgroups {
            remove_cgroup_tree(cg, &mut failures);
        }
        // Migrations' scratch directories (images, page stores) on tmpfs,
        // left by an agent that died mid-migration.
        if let Ok(rd) = std::fs::read_dir("/dev/shm") {
            let mine = format!("{prefix}-");
            for e in rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&mine)) {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    failures.push(format!("remove {}: {err}", e.path().display()));
                }
            }
        }
        if !failures.is_empty() {
            return Err(LabError::Down { id: state.id, dir: dir.to_path_buf(), failures });
        }
        match std::fs::remove_dir_all(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(LabError::Io { op: "removing lab directory", path: dir.to_path_buf(), source }),
        }
        tracing::info!(target: "lpm::lab", id = %state.id, dir = %dir.display(), "lab down");
        Ok(())
    }

    /// The lab's random id (6 hex digits).
    pub fn id(&self) -> &str {
        &self.state.id
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `lpm-ID`: the start of every namespace (and cgroup) name of the lab.
    pub fn prefix(&self) -> String {
        self.state.prefix()
    }

    /// The file holding the pre-shared key (64 hex digits, mode 0600).
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// The lab's hosts file (`hosts.toml`, see [`crate::hosts`]): every
    /// host's control API, the operator's identity and the namespace the
    /// CLI connects from.
    pub fn hosts_file(&self) -> PathBuf {
        self.dir.join(crate::hosts::LAB_FILE)
    }

    /// The lab's site PKI: its CA issued every host's certificate and the
    /// operator's ([`LAB_OPERATOR`]).
    pub fn pki(&self) -> Result<lpm_trust::Pki, LabError> {
        open_pki(&self.dir)
    }

    /// The partitions' subnet (network address of a /24).
    pub fn subnet(&self) -> Ipv4Addr {
        self.state.subnet
    }

    /// The management network (network address of a /24).
    pub fn mgmt_network(&self) -> Ipv4Addr {
        self.state.mgmt
    }

    /// The namespace holding the two bridges.
    pub fn fabric(&self) -> &str {
        &self.state.fabric
    }

    /// The hosts, `h1` first.
    pub fn hosts(&self) -> &[HostInfo] {
        &self.state.hosts
    }

    /// The host named `name` (`h1` ..).
    pub fn host(&self, name: &str) -> Option<&HostInfo> {
        self.state.hosts.iter().find(|h| h.name == name)
    }

    /// The client.
    pub fn client(&self) -> &ClientInfo {
        &self.state.client
    }

    /// Whether `up` finished (every `lpmd` was ready).
    pub fn is_ready(&self) -> bool {
        self.state.ready
    }

    /// The namespace of member `name`: a host (`h1` ..), `client` or
    /// `fabric`.
    pub fn netns_of(&self, name: &str) -> Result<Netns, LabError> {
        let ns = match name {
            "client" => &self.state.client.netns,
            "fabric" => &self.state.fabric,
            _ => &self.host(name).ok_or_else(|| self.no_member(name))?.netns,
        };
        Netns::open(ns).map_err(|source| LabError::Net {
            id: self.state.id.clone(),
            step: format!("opening the namespace of {name}"),
            source: Box::new(source),
        })
    }

    /// Runs `argv` inside member `name`'s namespace with the caller's stdio
    /// (through `ip netns exec`, so /sys shows the namespace's links too)
    /// and waits for it.
    pub fn exec<S: AsRef<OsStr>>(&self, name: &str, argv: &[S]) -> Result<ExitStatus, LabError> {
        let ns = self.netns_of(name)?;
        let Some(prog) = argv.first() else {
            return Err(LabError::Exec { member: name.to_string(), cmd: String::new(), source: io::Error::other("empty command") });
        };
        // `ip netns exec` rather than setns in a child: it also binds the
        // namespace's /etc/netns files and a /sys of its own, as an
        // operator's command run there gets them; no crate does that.
        Command::new("ip").args(["netns", "exec", ns.name()]).args(argv).status().map_err(|source| LabError::Exec {
            member: name.to_string(),
            cmd: prog.as_ref().to_string_lossy().into_owned(),
            source,
        })
    }

    /// The lowest partition address (`.10` to `.249`) not handed out by
    /// [`Lab::allocate_ip`]; it stays free until someone allocates it.
    pub fn free_ip(&self) -> Result<Ipv4Addr, LabError> {
        let state = read_state(&self.dir)?;
        first_free(&state)
    }

    /// Hands out the lowest free partition address to `owner` (a partition
    /// name), recorded in the state file under a file lock so that
    /// concurrent callers get different addresses.
    pub fn allocate_ip(&self, owner: &str) -> Result<Ipv4Addr, LabError> {
        with_locked_state(&self.dir, |state| {
            let ip = first_free(state)?;
            state.addresses.insert(ip, owner.to_string());
            Ok(ip)
        })
    }

    /// Checks that `ip`/`prefix` can be a partition's address in this
    /// lab: inside the partition network (its /24) and none of the
    /// addresses it keeps: the network and broadcast addresses, the
    /// gateway's (`.1`, kept for a router), the client's (`.250`), a
    /// host's management address. The error says which.
    pub fn check_ip(&self, ip: Ipv4Addr, prefix: u8) -> Result<(), LabError> {
        let net = self.state.subnet;
        let bad = |why: String| LabError::BadAddress { id: self.state.id.clone(), ip: format!("{ip}/{prefix}"), why };
        let o = ip.octets();
        if let Some(h) = self.state.hosts.iter().find(|h| h.mgmt_addr == ip) {
            return Err(bad(format!("the management address of host {}", h.name)));
        }
        if !ipnet::Ipv4Net::new(net, 24).is_ok_and(|n| n.contains(&ip)) {
            return Err(bad(format!("outside the partition network {net}/24")));
        }
        if prefix != 24 {
            return Err(bad(format!("the prefix length of the partition network {net}/24 is 24, not {prefix}")));
        }
        let why = match o[3] {
            0 => "the network address",
            255 => "the broadcast address",
            1 => "the gateway address (.1 is kept for a router)",
            CLIENT_HOST_PART => "the address of the lab's client",
            _ => return Ok(()),
        };
        Err(bad(format!("{why} of {net}/24")))
    }

    /// Records an address given explicitly for partition `owner`, after
    /// [`Lab::check_ip`], so that [`Lab::allocate_ip`] never hands it out.
    /// Fails if another owner holds it; recording it again for the same
    /// owner is fine.
    pub fn reserve_ip(&self, ip: Ipv4Addr, prefix: u8, owner: &str) -> Result<(), LabError> {
        self.check_ip(ip, prefix)?;
        with_locked_state(&self.dir, |state| match state.addresses.get(&ip) {
            Some(other) if other != owner => Err(LabError::AddressTaken { id: state.id.clone(), ip, owner: other.clone() }),
            _ => {
                state.addresses.insert(ip, owner.to_string());
                Ok(())
            }
        })
    }

    /// Gives back every address recorded for partition `owner` (when it
    /// is deleted, or its creation failed); returns them.
    pub fn release_owner(&self, owner: &str) -> Result<Vec<Ipv4Addr>, LabError> {
        with_locked_state(&self.dir, |state| {
            let mine: Vec<Ipv4Addr> = state.addresses.iter().filter(|(_, o)| o.as_str() == owner).map(|(ip, _)| *ip).collect();
            for ip in &mine {
                state.addresses.remove(ip);
            }
            Ok(mine)
        })
    }

    /// Gives back an address from [`Lab::allocate_ip`]; unknown addresses
    /// are ignored.
    pub fn release_ip(&self, ip: Ipv4Addr) -> Result<(), LabError> {
        with_locked_state(&self.dir, |state| {
            state.addresses.remove(&ip);
            Ok(())
        })
    }

    /// The addresses handed out, with their owners.
    pub fn addresses(&self) -> Result<BTreeMap<Ipv4Addr, String>, LabError> {
        Ok(read_state(&self.dir)?.addresses)
    }

    /// Restarts every host's `lpmd` with its mover in plain mode
    /// (`insecure`) or with mutual TLS: the benchmark measures both in the
    /// same lab. Returns the lab as loaded after (new pids).
    pub fn set_insecure(&self, insecure: bool) -> Result<Lab, LabError> {
        with_locked_state(&self.dir, |s| {
            s.insecure = insecure;
            Ok(())
        })?;
        for h in &self.state.hosts {
            self.restart(&h.name)?;
        }
        Lab::load(&self.dir)
    }

    /// Restarts the `lpmd` of host `host` the way [`Lab::up`] started it
    /// (same binary and arguments, in the host's namespace, in a session of
    /// its own, output appended to its log), as an operator would after a
    /// crash: a running one is stopped first (SIGTERM, which leaves its
    /// partitions running for the new one to adopt; SIGKILL after
    /// [`LPMD_STOP_TIMEOUT`]). Records the new pid
    /// in the state file and returns once its control socket exists (the
    /// agent sweeps what its predecessor left before it creates the
    /// socket). The new `lpmd` inherits the caller's environment, not the
    /// one `up` ran with: a fault injected through `LPM_FAULT` at `up` is
    /// gone unless the caller has it too. This value keeps the old pid;
    /// [`Lab::load`] sees the new one.
    pub fn restart(&self, host: &str) -> Result<(), LabError> {
        let state = read_state(&self.dir)?;
        let i = state.hosts.iter().position(|h| h.name == host).ok_or_else(|| self.no_member(host))?;
        let h = state.hosts[i].clone();
        let lpmd = state.lpmd.clone().ok_or_else(|| LabError::State {
            path: self.dir.join(STATE_FILE),
            reason: "no lpmd binary recorded (a lab made by an older lpm): take it down and up again".into(),
        })?;
        let opts = LabOptions {
            hosts: state.hosts.len(),
            subnet: String::new(),
            lpmd,
            lpmd_args: state.lpmd_args.clone(),
            insecure: state.insecure,
            console_args: None,
        };
        let mut failures = Vec::new();
        stop_lpmds(std::slice::from_ref(&h), &mut failures);
        if let Some(f) = failures.into_iter().next() {
            return Err(LabError::Down { id: state.id.clone(), dir: self.dir.clone(), failures: vec![f] });
        }
        // A killed lpmd leaves its socket file: readiness is a new one.
        match std::fs::remove_file(&h.control) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(LabError::Io { op: "removing stale control socket", path: h.control.clone(), source }),
        }
        let mut child = spawn_lpmd(&state, &h, &opts)?;
        let pid = child.id() as i32;
        let start = proc_start(pid);
        with_locked_state(&self.dir, |s| {
            if let Some(hs) = s.hosts.iter_mut().find(|x| x.name == host) {
                hs.pid = Some(pid);
                hs.pid_start = start;
            }
            Ok(())
        })?;
        wait_ready(&h, &mut child)?;
        tracing::info!(target: "lpm::lab", host, pid, "lpmd restarted");
        Ok(())
    }

    /// The lab's console, when it has one.
    pub fn console(&self) -> Option<&ConsoleInfo> {
        self.state.console.as_ref()
    }

    /// Starts the lab's console again as [`Lab::up`] did (stopping a
    /// running one first: SIGTERM, then SIGKILL), and returns once it
    /// accepts connections: what an operator does after the console
    /// died. Its database is kept.
    pub fn restart_console(&self) -> Result<(), LabError> {
        let state = read_state(&self.dir)?;
        let c = state.console.clone().ok_or_else(|| LabError::BadOptions(format!("lab {} has no console", state.id)))?;
        let mut failures = Vec::new();
        stop_pids(&[&c], &mut failures);
        if let Some(f) = failures.into_iter().next() {
            return Err(LabError::Down { id: state.id.clone(), dir: self.dir.clone(), failures: vec![f] });
        }
        let mut child = spawn_console(&state, &c)?;
        let pid = child.id() as i32;
        let start = proc_start(pid);
        with_locked_state(&self.dir, |s| {
            if let Some(sc) = s.console.as_mut() {
                sc.pid = Some(pid);
                sc.pid_start = start;
            }
            Ok(())
        })?;
        wait_console(&state, &c, &mut child)?;
        tracing::info!(target: "lpm::lab", pid, "console restarted");
        Ok(())
    }

    fn no_member(&self, name: &str) -> LabError {
        LabError::NoMember { id: self.state.id.clone(), name: name.to_string() }
    }
}

/// Checks the options; returns the partition subnet and the management
/// network.
fn check_options(opts: &LabOptions) -> Result<(Ipv4Addr, Ipv4Addr), LabError> {
    if !(1..=MAX_HOSTS).contains(&opts.hosts) {
        return Err(LabError::BadOptions(format!("hosts must be 1 to {MAX_HOSTS}, not {}", opts.hosts)));
    }
    let subnet = parse_subnet(&opts.subnet).map_err(|why| LabError::BadOptions(format!("subnet {:?}: {why}", opts.subnet)))?;
    let o = subnet.octets();
    let mgmt = Ipv4Addr::new(o[0], o[1], 0, 0);
    if !opts.lpmd.is_file() {
        return Err(LabError::BadOptions(format!("lpmd binary {} is not a file", opts.lpmd.display())));
    }
    Ok((subnet, mgmt))
}

/// Parses `a.b.c.0/24` with `c` not 0 (ipnet).
fn parse_subnet(s: &str) -> Result<Ipv4Addr, &'static str> {
    if !s.contains('/') {
        return Err("expected an IPv4 network like 10.213.1.0/24");
    }
    let net: ipnet::Ipv4Net = s.parse().map_err(|_| "not an IPv4 address and prefix length like 10.213.1.0/24")?;
    if net.prefix_len() != 24 {
        return Err("only /24 subnets are supported");
    }
    if net.addr() != net.network() {
        return Err("host bits are set (the last octet must be 0)");
    }
    if net.network().octets()[2] == 0 {
        return Err("the third octet must not be 0 (a.b.0.0/24 is the management network)");
    }
    Ok(net.network())
}

fn with_host_part(net: Ipv4Addr, host: u8) -> Ipv4Addr {
    let o = net.octets();
    Ipv4Addr::new(o[0], o[1], o[2], host)
}

fn first_free(state: &State) -> Result<Ipv4Addr, LabError> {
    PARTITION_IPS
        .map(|h| with_host_part(state.subnet, h))
        .find(|ip| !state.addresses.contains_key(ip))
        .ok_or_else(|| LabError::NoFreeAddress { id: state.id.clone(), subnet: state.subnet })
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LabError {
    let path = path.to_path_buf();
    move |source| LabError::Io { op, path, source }
}

/// Creates `dir` or checks that it is empty (`down` removes the whole
/// directory, so it must never be one that holds anything else); returns
/// it absolute, as `lpmd` gets paths inside it.
fn prepare_dir(dir: &Path) -> Result<PathBuf, LabError> {
    if dir.join(STATE_FILE).exists() {
        return Err(LabError::Exists(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(io_err("creating lab directory", dir))?;
    let mut entries = std::fs::read_dir(dir).map_err(io_err("reading lab directory", dir))?;
    if entries.next().is_some() {
        return Err(LabError::NotEmpty(dir.to_path_buf()));
    }
    dir.canonicalize().map_err(io_err("resolving lab directory", dir))
}

/// `down` for a directory without a state file: a crash before the first
/// state write leaves at most the directory, a temporary state file and the
/// lock; anything else is not ours to remove.
fn remove_stateless_dir(dir: &Path) -> Result<(), LabError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(LabError::Io { op: "reading lab directory", path: dir.to_path_buf(), source }),
    };
    let tmp = format!("{STATE_FILE}.tmp");
    let mut ours = Vec::new();
    for e in entries {
        let e = e.map_err(io_err("reading lab directory", dir))?;
        let name = e.file_name();
        if name != OsStr::new(&tmp) && name != OsStr::new(LOCK_FILE) && name != OsStr::new(KEY_FILE) {
            return Err(LabError::NotEmpty(dir.to_path_buf()));
        }
        ours.push(e.path());
    }
    for p in ours {
        std::fs::remove_file(&p).map_err(io_err("removing", &p))?;
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LabError::Io { op: "removing lab directory", path: dir.to_path_buf(), source }),
    }
}

fn read_state(dir: &Path) -> Result<State, LabError> {
    let path = dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(LabError::NotFound(dir.to_path_buf())),
        Err(source) => return Err(LabError::Io { op: "reading", path, source }),
    };
    let state: State = serde_json::from_str(&text).map_err(|e| LabError::State { path: path.clone(), reason: e.to_string() })?;
    if state.version != STATE_VERSION {
        return Err(LabError::State { path, reason: format!("version {} (this lpm reads {STATE_VERSION})", state.version) });
    }
    // The id selects what `down` deletes by name: never accept one that
    // would match more than this lab's pieces.
    if !valid_id(&state.id) {
        return Err(LabError::State { path, reason: format!("malformed lab id {:?}", state.id) });
    }
    let prefix = format!("{}-", state.prefix());
    if let Some(bad) = state.planned.iter().chain(&state.created).find(|n| !n.starts_with(&prefix)) {
        return Err(LabError::State { path, reason: format!("namespace {bad} is not the lab's") });
    }
    Ok(state)
}

fn valid_id(id: &str) -> bool {
    id.len() == 6 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Writes the state atomically (a temporary file renamed over the old one).
fn write_state(dir: &Path, state: &State) -> Result<(), LabError> {
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!("{STATE_FILE}.tmp"));
    let text = serde_json::to_string_pretty(state).map_err(|e| LabError::State { path: path.clone(), reason: e.to_string() })?;
    let mut f = std::fs::File::create(&tmp).map_err(io_err("creating", &tmp))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(io_err("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io_err("renaming to", &path))
}

/// Runs `f` on the state read under an exclusive lock and writes the result.
fn with_locked_state<T>(dir: &Path, f: impl FnOnce(&mut State) -> Result<T, LabError>) -> Result<T, LabError> {
    let lock_path = dir.join(LOCK_FILE);
    let lock =
        std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err("opening", &lock_path))?;
    rustix::fs::flock(lock.as_fd(), rustix::fs::FlockOperation::LockExclusive).map_err(|e| LabError::Io {
        op: "locking",
        path: lock_path.clone(),
        source: e.into(),
    })?;
    let mut state = read_state(dir)?;
    let r = f(&mut state)?;
    write_state(dir, &state)?;
    Ok(r)
}

fn random_bytes<const N: usize>() -> Result<[u8; N], LabError> {
    let mut b = [0u8; N];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut b)).map_err(io_err("reading", Path::new("/dev/urandom")))?;
    Ok(b)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A random id whose namespace names are all free.
fn new_id() -> Result<String, LabError> {
    let existing = Netns::list().map_err(|source| LabError::Net {
        id: String::new(),
        step: "listing network namespaces".into(),
        source: Box::new(source),
    })?;
    for _ in 0..16 {
        let id = hex(&random_bytes::<3>()?);
        let prefix = format!("lpm-{id}-");
        if !existing.iter().any(|n| n.starts_with(&prefix)) {
            return Ok(id);
        }
    }
    Err(LabError::BadOptions("no free lab id after 16 tries".into()))
}

/// The lab being built: the state and the rtnetlink runner with step
/// names.
struct Builder<'a> {
    dir: &'a Path,
    state: State,
}

impl Builder<'_> {
    /// Runs rtnetlink `step` in namespace `ns`.
    fn rtnl(&self, ns: &str, step: &str, f: impl FnOnce(&mut crate::rtnl::Rtnl) -> io::Result<()> + Send) -> Result<(), LabError> {
        let err = |source| LabError::Net { id: self.state.id.clone(), step: format!("{step} in {ns}"), source: Box::new(source) };
        let netns = Netns::open(ns).map_err(err)?;
        net::rtnl(Some(&netns), ns, "configure", f).map_err(err)
    }

    fn netns(&mut self, name: &str) -> Result<(), LabError> {
        Netns::create(name).map_err(|source| LabError::Net {
            id: self.state.id.clone(),
            step: format!("creating namespace {name}"),
            source: Box::new(source),
        })?;
        self.state.created.push(name.to_string());
        write_state(self.dir, &self.state)?;
        self.rtnl(name, "bring lo up", |r| r.set_up("lo"))
    }

    /// A veth pair: `outer` on `bridge` in the fabric, `inner` in `ns`.
    fn veth(&self, outer: &str, bridge: &str, ns: &str, inner: &str) -> Result<(), LabError> {
        let fabric = self.state.fabric.as_str();
        let step = format!("veth {outer} on {bridge}, its peer {inner} in {ns}");
        let err = |source| LabError::Net { id: self.state.id.clone(), step: step.clone(), source: Box::new(source) };
        let peer_ns = Netns::open(ns).and_then(|n| n.fd()).map_err(err)?;
        let peer_fd = peer_ns.as_fd();
        self.rtnl(fabric, &step, |r| {
            r.add_veth(outer, inner, None, Some(peer_fd))?;
            r.set_master(outer, Some(bridge))?;
            r.set_up(outer)
        })
    }
}

fn build(dir: &Path, opts: &LabOptions, subnet: Ipv4Addr, mgmt: Ipv4Addr) -> Result<Lab, LabError> {
    let id = new_id()?;
    let prefix = format!("lpm-{id}");
    let hosts: Vec<HostInfo> = (1..=opts.hosts)
        .map(|n| {
            let name = format!("h{n}");
            let hdir = dir.join(&name);
            let mgmt_addr = with_host_part(mgmt, 10 + n as u8);
            HostInfo {
                netns: format!("{prefix}-{name}"),
                mgmt_addr,
                listen: SocketAddrV4::new(mgmt_addr, LPMD_PORT),
                api: Some(SocketAddrV4::new(mgmt_addr, crate::hosts::API_PORT)),
                control: hdir.join("lpmd.sock"),
                log: hdir.join("lpmd.log"),
                dir: hdir,
                pid: None,
                pid_start: None,
                name,
            }
        })
        .collect();
    if let Some(h) = hosts.iter().find(|h| h.control.as_os_str().len() >= 108) {
        return Err(LabError::BadOptions(format!("control socket path {} is too long for a unix socket", h.control.display())));
    }
    let client = ClientInfo { netns: format!("{prefix}-client"), ifname: CLIENT_IF.into(), addr: with_host_part(subnet, CLIENT_HOST_PART) };
    let fabric = format!("{prefix}-fabric");
    let mut planned = vec![fabric.clone()];
    planned.extend(hosts.iter().map(|h| h.netns.clone()));
    planned.push(client.netns.clone());
    let state = State {
        version: STATE_VERSION,
        id: id.clone(),
        dir: dir.to_path_buf(),
        subnet,
        mgmt,
        fabric: fabric.clone(),
        planned,
        created: Vec::new(),
        hosts,
        client,
        ready: false,
        addresses: BTreeMap::new(),
        lpmd: Some(opts.lpmd.clone()),
        lpmd_args: opts.lpmd_args.clone(),
        insecure: opts.insecure,
        console: None,
    };
    write_state(dir, &state)?;
    let mut b = Builder { dir, state };
    tracing::info!(target: "lpm::lab", %id, dir = %dir.display(), hosts = opts.hosts, "lab up");

    let key = dir.join(KEY_FILE);
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&key).map_err(io_err("creating", &key))?;
    f.write_all(format!("{}\n", hex(&random_bytes::<32>()?)).as_bytes()).map_err(io_err("writing", &key))?;
    let pki_dir = dir.join(PKI_DIR);
    let pki_err = |source| LabError::Pki { dir: pki_dir.clone(), source };
    let pki = lpm_trust::Pki::init(&pki_dir).map_err(pki_err)?;
    for h in &b.state.hosts {
        pki.enroll(lpm_trust::Role::Host, &h.name).map_err(pki_err)?;
    }
    pki.enroll(lpm_trust::Role::Operator, LAB_OPERATOR).map_err(pki_err)?;

    b.netns(&fabric)?;
    for br in [MGMT_BRIDGE, PART_BRIDGE] {
        b.rtnl(&fabric, &format!("bridge {br}"), |r| {
            r.add_bridge(br)?;
            r.set_up(br)
        })?;
    }
    // The operator's seat on the management network: the CLI connects to
    // the hosts' control API from here, as from a console on that network.
    let seat = with_host_part(mgmt, OPERATOR_HOST_PART);
    b.rtnl(&fabric, &format!("address {seat}/24 on {MGMT_BRIDGE}"), |r| r.add_address(MGMT_BRIDGE, seat, 24))?;
    write_hosts_file(dir, &b.state, &pki)?;
    for h in b.state.hosts.clone() {
        std::fs::create_dir_all(&h.dir).map_err(io_err("creating host directory", &h.dir))?;
        b.netns(&h.netns)?;
        b.veth(&format!("mg-{}", h.name), MGMT_BRIDGE, &h.netns, MGMT_IF)?;
        b.rtnl(&h.netns, &format!("address {}/24 on {MGMT_IF}, bridge {BRIDGE}", h.mgmt_addr), |r| {
            r.add_address(MGMT_IF, h.mgmt_addr, 24)?;
            r.set_up(MGMT_IF)?;
            r.add_bridge(BRIDGE)?;
            r.set_up(BRIDGE)
        })?;
        b.veth(&format!("pt-{}", h.name), PART_BRIDGE, &h.netns, UPLINK_IF)?;
        b.rtnl(&h.netns, &format!("{UPLINK_IF} on {BRIDGE}"), |r| {
            r.set_master(UPLINK_IF, Some(BRIDGE))?;
            r.set_up(UPLINK_IF)
        })?;
    }
    let c = b.state.client.clone();
    b.netns(&c.netns)?;
    b.veth("pt-client", PART_BRIDGE, &c.netns, &c.ifname)?;
    b.rtnl(&c.netns, &format!("address {}/24 on {}", c.addr, c.ifname), |r| {
        r.add_address(&c.ifname, c.addr, 24)?;
        r.set_up(&c.ifname)
    })?;

    let mut children = Vec::new();
    for i in 0..b.state.hosts.len() {
        let child = spawn_lpmd(&b.state, &b.state.hosts[i], opts)?;
        let pid = child.id() as i32;
        b.state.hosts[i].pid = Some(pid);
        b.state.hosts[i].pid_start = proc_start(pid);
        write_state(dir, &b.state)?;
        children.push(child);
    }
    for (h, child) in b.state.hosts.iter().zip(&mut children) {
        wait_ready(h, child)?;
    }
    if let Some(args) = &opts.console_args {
        let c = ConsoleInfo {
            name: CONSOLE_NAME.into(),
            addr: SocketAddrV4::new(with_host_part(mgmt, OPERATOR_HOST_PART), CONSOLE_PORT),
            dir: dir.join(CONSOLE_DIR),
            config: dir.join(CONSOLE_DIR).join("console.toml"),
            log: dir.join(CONSOLE_DIR).join("console.log"),
            args: args.clone(),
            pid: None,
            pid_start: None,
        };
        pki.enroll(lpm_trust::Role::Console, &c.name).map_err(pki_err)?;
        std::fs::create_dir_all(&c.dir).map_err(io_err("creating console directory", &c.dir))?;
        write_console_config(&b.state, &c, &pki)?;
        b.state.console = Some(c.clone());
        let child = spawn_console(&b.state, &c)?;
        let pid = child.id() as i32;
        if let Some(bc) = b.state.console.as_mut() {
            bc.pid = Some(pid);
            bc.pid_start = proc_start(pid);
        }
        write_state(dir, &b.state)?;
        children.push(child);
        let child = children.last_mut().expect("just pushed");
        wait_console(&b.state, &c, child)?;
        write_hosts_file(dir, &b.state, &pki)?;
    }
    b.state.ready = true;
    write_state(dir, &b.state)?;
    // The children are not waited for here: `down` reaps them when this
    // process is still their parent.
    Ok(Lab { dir: dir.to_path_buf(), state: b.state })
}

/// Registers the lab's hosts for the CLI the way an operator registers
/// real ones (`lpm host add`), with the lab's operator identity.
fn write_hosts_file(dir: &Path, state: &State, pki: &lpm_trust::Pki) -> Result<(), LabError> {
    let op = pki.paths(lpm_trust::Role::Operator, LAB_OPERATOR);
    let mut f = crate::hosts::HostsFile {
        netns: Some(state.fabric.clone()),
        operator: Some(crate::hosts::Operator { ca: pki.ca_cert(), cert: op.cert, key: op.key }),
        // The CLI goes through the lab's console when it has one.
        console: state.console.as_ref().map(|c| crate::hosts::ConsoleEntry { addr: c.addr.into(), name: c.name.clone(), token: None }),
        ..Default::default()
    };
    for h in &state.hosts {
        let api = h.api.expect("a new lab's hosts have an API address");
        f.add(&h.name, api.into(), Some(h.listen.into()))
            .map_err(|e| LabError::State { path: dir.join(crate::hosts::LAB_FILE), reason: e.to_string() })?;
    }
    let path = dir.join(crate::hosts::LAB_FILE);
    f.save(&path).map_err(|e| LabError::State { path, reason: e.to_string() })
}

/// The console's configuration (docs/console.md): the lab's PKI, its
/// directory, the lab's hosts registered at its first start, a poll every
/// second.
fn write_console_config(state: &State, c: &ConsoleInfo, pki: &lpm_trust::Pki) -> Result<(), LabError> {
    let issued = pki.paths(lpm_trust::Role::Console, &c.name);
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let mut text = format!(
        "name = {:?}\nlisten = \"{}\"\nstate_dir = {}\npoll_interval_ms = 1000\npoll_timeout_ms = 5000\nmax_migrations = 8\n\n[tls]\nca = {}\ncert = {}\nkey = {}\n",
        c.name,
        c.addr,
        q(&c.dir),
        q(&pki.ca_cert()),
        q(&issued.cert),
        q(&issued.key)
    );
    for h in &state.hosts {
        let api = h.api.expect("a new lab's hosts have an API address");
        text.push_str(&format!("\n[hosts.{}]\napi = \"{api}\"\nmover = \"{}\"\n", h.name, h.listen));
    }
    std::fs::write(&c.config, text).map_err(io_err("writing", &c.config))
}

/// Starts the console in the fabric namespace, in a session of its own.
fn spawn_console(state: &State, c: &ConsoleInfo) -> Result<Child, LabError> {
    let ns = Netns::open(&state.fabric).and_then(|ns| ns.fd()).map_err(|source| LabError::Net {
        id: state.id.clone(),
        step: "opening the fabric namespace for the console".into(),
        source: Box::new(source),
    })?;
    let lpm = state.lpmd.clone().ok_or_else(|| LabError::BadOptions("no lpm binary recorded for the console".into()))?;
    let spawn_err = |source| LabError::Spawn { host: c.name.clone(), lpmd: lpm.clone(), source };
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&c.log).map_err(io_err("creating", &c.log))?;
    let log2 = log.try_clone().map_err(io_err("duplicating", &c.log))?;
    let mut cmd = Command::new("setsid");
    cmd.arg(&lpm).args(&c.args).arg("--config").arg(&c.config).stdin(Stdio::null()).stdout(log).stderr(log2);
    if std::env::var_os("LPM_LOG").is_none() {
        cmd.env("LPM_LOG", "info");
    }
    let child = lpm_sys::net::in_netns(ns.as_fd(), move || cmd.spawn())
        .map_err(|e| spawn_err(io::Error::other(e.to_string())))?
        .map_err(spawn_err)?;
    tracing::debug!(target: "lpm::lab", pid = child.id(), "console started");
    Ok(child)
}

/// Waits until the console accepts connections.
fn wait_console(state: &State, c: &ConsoleInfo, child: &mut Child) -> Result<(), LabError> {
    let ns = Netns::open(&state.fabric).and_then(|ns| ns.fd()).map_err(|source| LabError::Net {
        id: state.id.clone(),
        step: "opening the fabric namespace for the console".into(),
        source: Box::new(source),
    })?;
    let deadline = Instant::now() + LPMD_START_TIMEOUT * 2;
    let addr = std::net::SocketAddr::from(c.addr);
    loop {
        let up = lpm_sys::net::in_netns(ns.as_fd(), || std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())
            .unwrap_or(false);
        if up {
            return Ok(());
        }
        if let Some(status) = child.try_wait().map_err(io_err("waiting for the console", &c.log))? {
            return Err(LabError::LpmdExited { host: c.name.clone(), status, log_tail: log_tail(&c.log) });
        }
        if Instant::now() >= deadline {
            return Err(LabError::LpmdTimeout {
                host: c.name.clone(),
                control: c.config.clone(),
                timeout: LPMD_START_TIMEOUT * 2,
                log_tail: log_tail(&c.log),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn open_pki(lab: &Path) -> Result<lpm_trust::Pki, LabError> {
    let dir = lab.join(PKI_DIR);
    lpm_trust::Pki::open(&dir).map_err(|source| LabError::Pki { dir, source })
}

/// Starts `h`'s `lpmd` in its namespace: the spawning thread joins the
/// namespace, so the child starts there (and keeps the machine's mount
/// namespace, unlike `ip netns exec`); `setsid` gives it a session of its
/// own, so a terminal's signals to the CLI do not reach it.
fn spawn_lpmd(state: &State, h: &HostInfo, opts: &LabOptions) -> Result<Child, LabError> {
    let ns = Netns::open(&h.netns).and_then(|ns| ns.fd()).map_err(|source| LabError::Net {
        id: state.id.clone(),
        step: format!("opening namespace of {}", h.name),
        source: Box::new(source),
    })?;
    let spawn_err = |source| LabError::Spawn { host: h.name.clone(), lpmd: opts.lpmd.clone(), source };
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&h.log).map_err(io_err("creating", &h.log))?;
    let log2 = log.try_clone().map_err(io_err("duplicating", &h.log))?;
    // Started from its configuration file alone, as an installed lpmd is
    // by its unit.
    let config = h.dir.join(CONFIG_FILE);
    let pki = open_pki(&state.dir)?;
    let issued = pki.paths(lpm_trust::Role::Host, &h.name);
    let c = AgentConfig {
        host: Some(h.name.clone()),
        dir: Some(h.dir.clone()),
        listen: Some(h.listen.into()),
        key: Some(state.dir.join(KEY_FILE)),
        control: Some(h.control.clone()),
        bridge: Some(BRIDGE.into()),
        prefix: Some(state.prefix()),
        tls_ca: Some(pki.ca_cert()),
        tls_cert: Some(issued.cert),
        tls_key: Some(issued.key),
        insecure: opts.insecure.then_some(true),
        api_listen: h.api.map(Into::into),
        // Every host's state and socket is on this one machine: each
        // host's partitions see none of them.
        hide: Some(state.hosts.iter().map(|h| h.dir.clone()).collect()),
        ..AgentConfig::default()
    };
    c.write(&config).map_err(|e| spawn_err(io::Error::other(e.to_string())))?;
    let mut cmd = Command::new("setsid");
    // The extra arguments go first: they may name a subcommand (`lpm
    // daemon`) before the agent's own options.
    cmd.arg(&opts.lpmd).args(&opts.lpmd_args).arg("--config").arg(&config).stdin(Stdio::null()).stdout(log).stderr(log2);
    let child = lpm_sys::net::in_netns(ns.as_fd(), move || cmd.spawn())
        .map_err(|e| spawn_err(io::Error::other(e.to_string())))?
        .map_err(spawn_err)?;
    tracing::debug!(target: "lpm::lab", host = %h.name, pid = child.id(), "lpmd started");
    Ok(child)
}

fn wait_ready(h: &HostInfo, child: &mut Child) -> Result<(), LabError> {
    let deadline = Instant::now() + LPMD_START_TIMEOUT;
    loop {
        if std::fs::metadata(&h.control).map(|m| m.file_type().is_socket()).unwrap_or(false) {
            return Ok(());
        }
        if let Some(status) = child.try_wait().map_err(io_err("waiting for lpmd", &h.control))? {
            return Err(LabError::LpmdExited { host: h.name.clone(), status, log_tail: log_tail(&h.log) });
        }
        if Instant::now() >= deadline {
            return Err(LabError::LpmdTimeout {
                host: h.name.clone(),
                control: h.control.clone(),
                timeout: LPMD_START_TIMEOUT,
                log_tail: log_tail(&h.log),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The last 20 lines of a log.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// Field 22 (starttime) of /proc/PID/stat; None when the task is gone or
/// a zombie (which no longer counts as running).
fn proc_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state), so field 22 is fields[19].
    if matches!(fields.first(), Some(&"Z") | Some(&"X")) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether `pid` still runs the process that started at `start`.
fn still_running(pid: i32, start: Option<u64>) -> bool {
    match (proc_start(pid), start) {
        (Some(now), Some(then)) => now == then,
        // Unknown start: the pid may have been recycled; never signal it by
        // pid (a process left in the lab's namespaces is found by them).
        (Some(_), None) | (None, _) => false,
    }
}

fn signal(pid: i32, sig: rustix::process::Signal) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, sig);
    }
}

/// Reaps `pid` if it is a child of this process (the CLI or a test that ran
/// `up`); ECHILD otherwise, which is fine.
fn reap(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::waitpid(Some(p), rustix::process::WaitOptions::NOHANG);
    }
}

/// Waits until none of `pids` runs, up to `timeout`; returns those still
/// running. A zombie counts as gone. With `reap`, `pids` are reaped when
/// they are children of this process: only for the `lpmd`s that `up` started
/// and whose handles it dropped, never for processes someone else may wait
/// for.
fn wait_gone(pids: &[(i32, Option<u64>)], timeout: Duration, reap_them: bool) -> Vec<(i32, Option<u64>)> {
    let deadline = Instant::now() + timeout;
    loop {
        if reap_them {
            for &(pid, _) in pids {
                reap(pid);
            }
        }
        let left: Vec<_> = pids.iter().copied().filter(|&(pid, start)| still_running(pid, start)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM to every `lpmd` (each leaves its partitions running: the
/// lab's teardown kills what runs in its namespaces), SIGKILL to those
/// still running after [`LPMD_STOP_TIMEOUT`].
/// Stops the console (SIGTERM, SIGKILL after [`LPMD_STOP_TIMEOUT`]).
fn stop_pids(consoles: &[&ConsoleInfo], failures: &mut Vec<String>) {
    let pids: Vec<(i32, Option<u64>)> =
        consoles.iter().filter_map(|c| Some((c.pid?, c.pid_start))).filter(|&(pid, start)| still_running(pid, start)).collect();
    for &(pid, _) in &pids {
        signal(pid, rustix::process::Signal::TERM);
    }
    let left = wait_gone(&pids, LPMD_STOP_TIMEOUT, true);
    for &(pid, _) in &left {
        signal(pid, rustix::process::Signal::KILL);
    }
    for (pid, _) in wait_gone(&left, Duration::from_secs(2), true) {
        failures.push(format!("console {pid} survived SIGKILL"));
    }
    for &(pid, _) in &pids {
        reap(pid);
    }
}

fn stop_lpmds(hosts: &[HostInfo], failures: &mut Vec<String>) {
    let pids: Vec<(i32, Option<u64>)> =
        hosts.iter().filter_map(|h| Some((h.pid?, h.pid_start))).filter(|&(pid, start)| still_running(pid, start)).collect();
    for &(pid, _) in &pids {
        signal(pid, rustix::process::Signal::TERM);
    }
    let left = wait_gone(&pids, LPMD_STOP_TIMEOUT, true);
    for &(pid, _) in &left {
        tracing::warn!(target: "lpm::lab", pid, "lpmd ignored SIGTERM; killing it");
        signal(pid, rustix::process::Signal::KILL);
    }
    for (pid, _) in wait_gone(&left, Duration::from_secs(2), true) {
        failures.push(format!("lpmd {pid} survived SIGKILL"));
    }
    for &(pid, _) in &pids {
        reap(pid);
    }
}

/// The processes in any of the namespaces `names` or in the cgroup trees
/// `cgroups`, with their start times.
fn members(names: &BTreeSet<String>, cgroups: &[PathBuf]) -> Vec<(i32, Option<u64>)> {
    let mut inodes = BTreeSet::new();
    for n in names {
        if let Ok(m) = std::fs::metadata(Path::new(net::NETNS_DIR).join(n)) {
            inodes.insert((m.dev(), m.ino()));
        }
    }
    let me = std::process::id() as i32;
    let mut pids = BTreeSet::new();
    if !inodes.is_empty() {
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            if pid == me {
                continue;
            }
            // Zombies have no namespaces left: the stat fails and they are
            // skipped, as they should be.
            if let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/net")) {
                if inodes.contains(&(m.dev(), m.ino())) {
                    pids.insert(pid);
                }
            }
        }
    }
    for cg in cgroups {
        for d in cgroup_tree(cg) {
            let procs = std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()).filter(|&p| p != me));
        }
    }
    pids.into_iter().map(|p| (p, proc_start(p))).filter(|&(_, s)| s.is_some()).collect()
}

/// Kills (SIGKILL) whatever still runs in the lab's namespaces or cgroups:
/// partitions of an `lpmd` that was killed, shells of `lab exec`. Frozen
/// cgroups are thawed first, or the v1 freezer would keep the tasks alive.
fn kill_members(names: &BTreeSet<String>, cgroups: &[PathBuf], failures: &mut Vec<String>) {
    for cg in cgroups {
        for d in cgroup_tree(cg) {
            let _ = std::fs::write(d.join("cgroup.freeze"), "0");
            let _ = std::fs::write(d.join("freezer.state"), "THAWED");
        }
    }
    let pids = members(names, cgroups);
    if pids.is_empty() {
        return;
    }
    tracing::info!(target: "lpm::lab", count = pids.len(), "killing processes left in the lab");
    for &(pid, _) in &pids {
        signal(pid, rustix::process::Signal::KILL);
    }
    for (pid, _) in wait_gone(&pids, Duration::from_secs(3), false) {
        failures.push(format!("process {pid} survived SIGKILL"));
    }
}

/// The mount points of cgroup hierarchies (v1 and v2).
fn cgroup_mounts() -> io::Result<Vec<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut out = Vec::new();
    for line in info.lines() {
        let Some((left, right)) = line.split_once(" - ") else { continue };
        let fstype = right.split_whitespace().next().unwrap_or("");
        if fstype == "cgroup" || fstype == "cgroup2" {
            if let Some(mp) = left.split_whitespace().nth(4) {
                out.push(PathBuf::from(crate::cgroup::unescape_mountinfo(mp)));
            }
        }
    }
    Ok(out)
}

/// The cgroups named `prefix` or `prefix-*` anywhere under every cgroup
/// mount (their subtrees are not searched further: they go as a whole).
fn find_cgroups(prefix: &str, failures: &mut Vec<String>) -> Vec<PathBuf> {
    let mounts = match cgroup_mounts() {
        Ok(m) => m,
        Err(e) => {
            failures.push(format!("reading /proc/self/mountinfo: {e}"));
            return Vec::new();
        }
    };
    let dashed = format!("{prefix}-");
    let mut found = Vec::new();
    let mut stack: Vec<(PathBuf, usize)> = mounts.into_iter().map(|m| (m, 0)).collect();
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name == prefix || name.starts_with(&dashed) {
                found.push(e.path());
            } else if depth < 8 {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// `root` and every cgroup below it, deepest first.
fn cgroup_tree(root: &Path) -> Vec<PathBuf> {
    let mut all = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            stack.extend(rd.flatten().filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false)).map(|e| e.path()));
        }
        all.push(d);
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    all
}

/// Removes a cgroup tree with rmdir, deepest first; retries briefly while
/// the kernel still counts killed tasks (EBUSY).
fn remove_cgroup_tree(root: &Path, failures: &mut Vec<String>) {
    for d in cgroup_tree(root) {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match std::fs::remove_dir(&d) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => {
                    failures.push(format!("removing cgroup {}: {e}", d.display()));
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        assert_eq!(parse_subnet("10.213.1.0/24"), Ok(Ipv4Addr::new(10, 213, 1, 0)));
        assert_eq!(parse_subnet("192.168.7.0/24"), Ok(Ipv4Addr::new(192, 168, 7, 0)));
        for bad in ["", "10.213.1.0", "10.213.1.0/16", "10.213.1.5/24", "10.213.0.0/24", "10.213.1/24", "x/24", "10.213.1.0/x"] {
            assert!(parse_subnet(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids() {
        assert!(valid_id("0a9fbc"));
        for bad in ["", "0a9fb", "0a9fbcd", "0A9FBC", "0a9fbg", "../../"] {
            assert!(!valid_id(bad), "{bad}");
        }
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(crate::cgroup::unescape_mountinfo(r"/sys/fs/cgroup/a\040b"), "/sys/fs/cgroup/a b");
        assert_eq!(crate::cgroup::unescape_mountinfo(r"/x\\"), r"/x\\");
    }

    #[test]
    fn start_time_of_self() {
        let me = std::process::id() as i32;
        let s = proc_start(me).unwrap();
        assert!(still_running(me, Some(s)));
        assert!(!still_running(me, Some(s + 1)));
    }
}
