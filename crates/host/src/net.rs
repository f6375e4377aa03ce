//! Network plumbing: named network namespaces, links, bridges and
//! addresses by rtnetlink ([`rtnl`], crate::rtnl), and the gratuitous ARP
//! that announces a partition's address after it moved.
//!
//! Namespaces follow iproute2's convention (a bind mount at
//! `/run/netns/NAME`) so that an operator can look at everything lpm built
//! with `ip -n NAME ...` and `ip netns exec NAME ...`; they are still made
//! and deleted by `ip netns` ([`Netns::create`], [`Netns::delete`]):
//! no crate makes that convention's shared mount of /run/netns, and
//! iproute2's own is what every operator's tool reads. Links and
//! addresses are requests on a netlink socket, not `ip` processes (a
//! partition's plumbing took 7 of them); [`ip`] stays for the tests and
//! for what an operator would type.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// Where iproute2 keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// How many times [`gratuitous_arp`] sends each form of the announcement.
pub const GARP_ROUNDS: usize = 3;
/// The pause between rounds of [`gratuitous_arp`].
pub const GARP_INTERVAL: Duration = Duration::from_millis(100);

/// Errors of the network plumbing; each names the command, namespace or
/// interface.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A namespace name iproute2 would refuse or that would escape
    /// [`NETNS_DIR`].
    #[error("invalid network namespace name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `ip` could not be started.
    #[error("running `{cmd}`")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `ip` ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Ip {
        /// The command line.
        cmd: String,
        /// How it ended.
        status: std::process::ExitStatus,
        /// What it printed on stderr, trimmed.
        stderr: String,
    },
    /// The named namespace does not exist.
    #[error("network namespace {name} does not exist")]
    NoNetns {
        /// The name.
        name: String,
    },
    /// Opening a namespace file failed.
    #[error("opening network namespace {path}")]
    Open {
        /// The file under [`NETNS_DIR`].
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Putting an interface on a bridge or taking it off failed.
    #[error("set the bridge of {ifname} to {}", master.as_deref().unwrap_or("none"))]
    Master {
        /// The interface.
        ifname: String,
        /// The bridge, None to take it off.
        master: Option<String>,
        /// The cause.
        #[source]
        source: lpm_sys::Error,
    },
    /// A step of holding a partition's frames during a migration's stop
    /// failed (crate::hold).
    #[error("{op} ({ifname})")]
    Hold {
        /// The interface.
        ifname: String,
        /// The step.
        op: &'static str,
        /// The cause.
        #[source]
        source: lpm_sys::Error,
    },
    /// Asking the kernel about a link by rtnetlink failed.
    #[error("{op} of {ifname} by rtnetlink")]
    Netlink {
        /// The interface.
        ifname: String,
        /// The step.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Entering a network namespace for a step failed.
    #[error("enter network namespace {ns}")]
    EnterNetns {
        /// The namespace.
        ns: String,
        /// The cause.
        #[source]
        source: lpm_sys::Error,
    },
    /// Sending the gratuitous ARP failed.
    #[error("gratuitous arp for {ip} on {ifname} in network namespace {ns}")]
    Arp {
        /// The namespace.
        ns: String,
        /// The interface.
        ifname: String,
        /// The announced address.
        ip: Ipv4Addr,
        /// The cause.
        #[source]
        source: lpm_sys::Error,
    },
}

/// Puts `ifname` on bridge `master` (None: off its bridge) in the calling
/// thread's network namespace, by rtnetlink rather than `ip`: a
/// migration does it inside its downtime.
pub fn set_master(ifname: &str, master: Option<&str>) -> Result<(), NetError> {
    lpm_sys::net::set_link_master(ifname, master).map_err(|source| NetError::Master {
        ifname: ifname.to_string(),
        master: master.map(str::to_string),
        source,
    })
}

/// Runs rtnetlink step `op` on link `ifname`, in namespace `ns` (the
/// calling thread's when None), with a socket opened there
/// ([`crate::rtnl::in_netns`]).
pub fn rtnl<T: Send>(
    ns: Option<&Netns>,
    ifname: &str,
    op: &'static str,
    f: impl FnOnce(&mut crate::rtnl::Rtnl) -> io::Result<T> + Send,
) -> Result<T, NetError> {
    let fd = ns.map(Netns::fd).transpose()?;
    crate::rtnl::in_netns(fd.as_ref().map(|f| f.as_fd()), f).map_err(|source| NetError::Netlink { ifname: ifname.to_string(), op, source })
}

/// Whether link `ifname` of the calling thread's network namespace is
/// operationally up (IFLA_OPERSTATE), asked by rtnetlink
/// (netlink-packet-route) rather than by running `ip link show`: it is
/// asked in a loop while the kernel's link watch brings a new link up,
/// where a process per look cost milliseconds each.
pub fn oper_up(ifname: &str) -> Result<bool, NetError> {
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};
    use netlink_packet_route::link::{LinkAttribute, LinkMessage, State};
    use netlink_packet_route::RouteNetlinkMessage;
    let fail = |op: &'static str| {
        let ifname = ifname.to_string();
        move |source: io::Error| NetError::Netlink { ifname, op, source }
    };
    let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE).map_err(fail("open a socket"))?;
    sock.bind_auto().map_err(fail("bind the socket"))?;
    sock.connect(&netlink_sys::SocketAddr::new(0, 0)).map_err(fail("connect the socket"))?;
    let mut link = LinkMessage::default();
    link.attributes.push(LinkAttribute::IfName(ifname.to_string()));
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST;
    header.sequence_number = 1;
    let mut req = NetlinkMessage::new(header, NetlinkPayload::from(RouteNetlinkMessage::GetLink(link)));
    req.finalize();
    let mut buf = vec![0; req.buffer_len()];
    req.serialize(&mut buf);
    sock.send(&buf, 0).map_err(fail("ask for the link"))?;
    let (answer, _) = sock.recv_from_full().map_err(fail("read the answer"))?;
    let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&answer)
        .map_err(|e| fail("decode the answer")(io::Error::other(e.to_string())))?;
    match msg.payload {
        NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
            Ok(l.attributes.iter().any(|a| matches!(a, LinkAttribute::OperState(State::Up))))
        }
        NetlinkPayload::Error(e) => Err(fail("ask for the link")(e.to_io())),
        other => Err(fail("decode the answer")(io::Error::other(format!("unexpected answer {other:?}")))),
    }
}

/// Waits until link `ifname` of namespace `ns` is operationally up, for
/// at most `timeout`; false when it is not up by then.
pub fn wait_oper_up(ns: &Netns, ifname: &str, timeout: Duration) -> Result<bool, NetError> {
    let fd = ns.fd()?;
    // One thread in the namespace for the whole wait.
    let waited = lpm_sys::net::in_netns(fd.as_fd(), || {
        let t = std::time::Instant::now();
        loop {
            if oper_up(ifname)? {
                return Ok(true);
            }
            if t.elapsed() > timeout {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    waited.map_err(|source| NetError::EnterNetns { ns: ns.name().to_string(), source })?
}

/// A named network namespace, `/run/netns/NAME`. The value is only the
/// name: dropping it deletes nothing (see [`Netns::delete`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` (`ip netns add`); fails when it exists.
    /// iproute2 rather than rtnetlink: a named namespace is a bind mount
    /// under /run/netns, made shared the way iproute2 does so that every
    /// tool finds it; no netlink request or crate makes one.
    pub fn create(name: &str) -> Result<Netns, NetError> {
        check_name(name)?;
        ip(None, &["netns", "add", name])?;
        Ok(Netns { name: name.to_string() })
    }

    /// The existing namespace `name`.
    pub fn open(name: &str) -> Result<Netns, NetError> {
        check_name(name)?;
        let ns = Netns { name: name.to_string() };
        if !ns.path().exists() {
            return Err(NetError::NoNetns { name: name.to_string() });
        }
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file, `/run/netns/NAME`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_DIR).join(&self.name)
    }

    /// A descriptor for the namespace, for setns (it keeps the namespace
    /// alive while open, even after [`Netns::delete`]).
    pub fn fd(&self) -> Result<OwnedFd, NetError> {
        let path = self.path();
        match std::fs::File::open(&path) {
            Ok(f) => Ok(f.into()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(NetError::NoNetns { name: self.name.clone() }),
            Err(source) => Err(NetError::Open { path, source }),
        }
    }

    /// Deletes namespace `name` (`ip netns delete`): its name goes at once,
    /// the namespace itself with its links when the last process and
    /// descriptor in it are gone. Deleting a missing namespace succeeds.
    pub fn delete(name: &str) -> Result<(), NetError> {
        check_name(name)?;
        let path = PathBuf::from(NETNS_DIR).join(name);
        if !path.exists() {
            return Ok(());
        }
        match ip(None, &["netns", "delete", name]) {
            Ok(_) => Ok(()),
            // Someone else deleted it meanwhile: the goal is reached.
            Err(_) if !path.exists() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The names of all named namespaces, sorted.
    pub fn list() -> Result<Vec<String>, NetError> {
        let rd = match std::fs::read_dir(NETNS_DIR) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(NetError::Open { path: NETNS_DIR.into(), source }),
        };
        let mut names: Vec<String> = rd.filter_map(|e| e.ok()).filter_map(|e| e.file_name().into_string().ok()).collect();
        names.sort();
        Ok(names)
    }
}

/// Refuses names iproute2 refuses, and anything that is not a plain file
/// name under [`NETNS_DIR`].
fn check_name(name: &str) -> Result<(), NetError> {
    let bad = |reason| Err(NetError::BadName { name: name.to_string(), reason });
    if name.is_empty() {
        return bad("empty");
    }
    if name.len() > 255 {
        return bad("longer than 255 bytes");
    }
    if name == "." || name == ".." {
        return bad("a special directory name");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        return bad("only letters, digits, '-', '_' and '.' are allowed");
    }
    Ok(())
}

/// Runs `ip` (iproute2), in namespace `ns` when given (`ip -n NS ...`), and
/// returns its stdout. The error names the command and carries its stderr.
pub fn ip(ns: Option<&str>, args: &[&str]) -> Result<String, NetError> {
    let mut full: Vec<&str> = Vec::with_capacity(args.len() + 2);
    if let Some(ns) = ns {
        check_name(ns)?;
        full.extend(["-n", ns]);
    }
    full.extend_from_slice(args);
    let cmd = format!("ip {}", full.join(" "));
    let out = Command::new("ip").args(&full).output().map_err(|source| NetError::Spawn { cmd: cmd.clone(), source })?;
    if !out.status.success() {
        return Err(NetError::Ip { cmd, status: out.status, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    tracing::trace!(target: "lpm::net", %cmd, "ran");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs an nftables script (`nft -f -`) inside namespace `ns` (through
/// `ip netns exec`: not rtnetlink, nftables speaks a netlink family of its
/// own, and its script is what an operator reads and types). The error names the command and carries nft's stderr.
pub fn nft(ns: &str, script: &str) -> Result<(), NetError> {
    check_name(ns)?;
    run_nft(&["ip", "netns", "exec", ns, "nft", "-f", "-"], script)
}

/// Runs an nftables script (`nft -f -`) in the caller's own network
/// namespace. The error names the command and carries nft's stderr.
pub fn nft_here(script: &str) -> Result<(), NetError> {
    run_nft(&["nft", "-f", "-"], script)
}

/// Runs `argv`, an nft reading its script from stdin, with `script`.
fn run_nft(argv: &[&str], script: &str) -> Result<(), NetError> {
    let cmd = format!("{} <<< {script:?}", argv.join(" "));
    let mut child = Command::new(argv[0])
        .args(&argv[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Spawn { cmd: cmd.clone(), source })?;
    let fed = child.stdin.take().map(|mut i| std::io::Write::write_all(&mut i, script.as_bytes()));
    let out = child.wait_with_output().map_err(|source| NetError::Spawn { cmd: cmd.clone(), source })?;
    if !out.status.success() {
        return Err(NetError::Ip { cmd, status: out.status, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    if let Some(Err(source)) = fed {
        return Err(NetError::Spawn { cmd, source });
    }
    tracing::trace!(target: "lpm::net", %cmd, "ran");
    Ok(())
}

/// Sends a gratuitous ARP (request and reply form, [`GARP_ROUNDS`] times,
/// [`GARP_INTERVAL`] apart) for `ip` from interface `ifname` inside netns
/// `ns`, from the interface's own MAC: bridges on the way relearn the port
/// of that MAC and neighbours holding an entry for `ip` update it. Linux
/// neighbours create no new entry from it unless their `arp_accept` is set.
pub fn gratuitous_arp(ns: &str, ifname: &str, ip: Ipv4Addr) -> Result<(), NetError> {
    gratuitous_arp_rounds(ns, ifname, ip, GARP_ROUNDS)
}

/// [`gratuitous_arp`] `rounds` times.
pub fn gratuitous_arp_rounds(ns: &str, ifname: &str, ip: Ipv4Addr, rounds: usize) -> Result<(), NetError> {
    let fd = Netns::open(ns)?.fd()?;
    lpm_sys::arp::announce(fd.as_fd(), ifname, ip, rounds, GARP_INTERVAL).map_err(|source| NetError::Arp {
        ns: ns.to_string(),
        ifname: ifname.to_string(),
        ip,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for bad in ["", ".", "..", "a/b", "a b", "x\0"] {
            assert!(matches!(check_name(bad), Err(NetError::BadName { .. })), "{bad:?}");
        }
        check_name("lpm-abc123-h1").unwrap();
    }

    #[test]
    fn netns_life_cycle() {
        let name = format!("lpm-nettest-{}", std::process::id());
        let _guard = Guard(name.clone());
        let ns = Netns::create(&name).unwrap();
        assert!(ns.path().exists());
        assert!(Netns::list().unwrap().contains(&name));
        assert!(matches!(Netns::create(&name), Err(NetError::Ip { .. })));
        ns.fd().unwrap();
        let out = ip(Some(&name), &["-o", "link", "show", "lo"]).unwrap();
        assert!(out.contains("lo:"), "{out}");
        // lo is down in a new namespace; up (its state UNKNOWN) is not
        // operationally up either; a missing link is an error naming it.
        assert!(!wait_oper_up(&ns, "lo", Duration::ZERO).unwrap());
        let e = wait_oper_up(&ns, "nosuch0", Duration::ZERO).unwrap_err();
        assert!(format!("{e}").contains("nosuch0"), "{e}");
        let e = ip(Some(&name), &["link", "show", "nosuch0"]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("nosuch0") && msg.contains(&name), "{msg}");
        Netns::delete(&name).unwrap();
        Netns::delete(&name).unwrap();
        assert!(matches!(Netns::open(&name), Err(NetError::NoNetns { .. })));
        assert!(matches!(ns.fd(), Err(NetError::NoNetns { .. })));
    }

    struct Guard(String);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = Netns::delete(&self.0);
        }
    }
}
