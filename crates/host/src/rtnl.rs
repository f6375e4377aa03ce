//! Links and addresses by rtnetlink: the requests `ip link` and `ip addr`
//! would send, made with netlink-packet-route's messages on a netlink
//! socket of the calling thread's network namespace.
//!
//! A netlink socket acts in the namespace of the thread that opened it:
//! [`in_netns`] opens one on a thread that entered the namespace
//! (lpm_sys::net::in_netns) and makes every request of a step there;
//! a peer moves to another namespace by its descriptor (IFLA_NET_NS_FD).
//!
//! Not the rtnetlink crate: rtnetlink 0.24 sends the same
//! netlink-packet-route messages through a tokio connection, which this
//! synchronous crate would have to start a runtime for at every step,
//! on a thread that must stay in one namespace. A blocking socket is a
//! send and a receive per request (a create of a partition's plumbing
//! went from 7 `ip` processes to 7 requests; see the module's callers).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

/// A link as a dump lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    /// Its index.
    pub index: u32,
    /// Its name.
    pub name: String,
    /// The index of its bridge (its controller), if it is a port of one.
    pub master: Option<u32>,
    /// Its kind ("veth", "bridge"), when it has one.
    pub kind: Option<String>,
}

/// A route netlink socket of the namespace of the thread that opened it.
pub struct Rtnl {
    sock: netlink_sys::Socket,
    seq: u32,
}

/// The kernel's answer to a request that failed, as an io::Error.
fn decode_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("undecodable rtnetlink answer: {e}"))
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Rtnl> {
        let mut sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)?;
        sock.bind_auto()?;
        sock.connect(&netlink_sys::SocketAddr::new(0, 0))?;
        Ok(Rtnl { sock, seq: 0 })
    }

    /// Sends `msg` with `flags` and gathers the answers until the
    /// acknowledgement (or the end of a dump); a negative acknowledgement
    /// is the kernel's errno.
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut buf = vec![0; req.buffer_len()];
        req.serialize(&mut buf);
        self.sock.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.sock.recv_from_full()?;
            let mut off = 0;
            while off < data.len() {
                let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[off..]).map_err(decode_err)?;
                let len = m.header.length as usize;
                if len == 0 {
                    return Err(decode_err("a message of length 0"));
                }
                off += (len + 3) & !3;
                if m.header.sequence_number != self.seq {
                    continue;
                }
                match m.payload {
                    NetlinkPayload::InnerMessage(inner) => out.push(inner),
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// A request that answers with an acknowledgement only.
    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        self.request(msg, flags | NLM_F_ACK).map(drop)
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let answers = self.request(RouteNetlinkMessage::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })
            .collect())
    }

    /// Link `name`, None when there is none.
    pub fn link(&mut self, name: &str) -> io::Result<Option<Link>> {
        match self.request(RouteNetlinkMessage::GetLink(named(name)), NLM_F_ACK) {
            Ok(answers) => Ok(answers.iter().find_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates veth pair `name` – `peer`, the peer with address `peer_mac`
    /// and in the network namespace `peer_ns` when given (`ip link add
    /// NAME type veth peer name PEER address MAC netns NS`).
    pub fn add_veth(&mut self, name: &str, peer: &str, peer_mac: Option<[u8; 6]>, peer_ns: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let mut p = named(peer);
        if let Some(mac) = peer_mac {
            p.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        if let Some(fd) = peer_ns {
            // The kernel takes the namespace while it handles the request:
            // the descriptor only has to be open until the answer.
            p.attributes.push(LinkAttribute::NetNsFd(fd.as_raw_fd()));
        }
        let mut m = named(name);
        m.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth), LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p)))]));
        self.ack(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Creates bridge `name` (`ip link add NAME type bridge`).
    pub fn add_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut m = named(name);
        m.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]));
        self.ack(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Brings link `name` up (`ip link set NAME up`).
    pub fn set_up(&mut self, name: &str) -> io::Result<()> {
        let mut m = named(name);
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.ack(RouteNetlinkMessage::NewLink(m), 0)
    }

    /// Makes link `name` a port of bridge `master`, or of none (`ip link
    /// set NAME master BRIDGE` / `nomaster`).
    pub fn set_master(&mut self, name: &str, master: Option<&str>) -> io::Result<()> {
        let index = match master {
            None => 0,
            Some(b) => self.link(b)?.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no link {b}")))?.index,
        };
        let mut m = named(name);
        m.attributes.push(LinkAttribute::Controller(index));
        self.ack(RouteNetlinkMessage::NewLink(m), 0)
    }

    /// Makes bridge port `name` quiet: it learns no address and gets no
    /// flooded frame, unicast, multicast or broadcast (`ip link set dev
    /// NAME type bridge_slave learning off flood off mcast_flood off
    /// bcast_flood off`).
    pub fn quiet_bridge_port(&mut self, name: &str) -> io::Result<()> {
        let mut m = named(name);
        let port = vec![
            InfoBridgePort::Learning(false),
            InfoBridgePort::UnicastFlood(false),
            InfoBridgePort::MulticastFlood(false),
            InfoBridgePort::BroadcastFlood(false),
        ];
        m.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(port)),
        ]));
        self.ack(RouteNetlinkMessage::NewLink(m), 0)
    }

    /// Deletes link `name` (`ip link del NAME`); false when there was
    /// none.
    pub fn delete(&mut self, name: &str) -> io::Result<bool> {
        match self.ack(RouteNetlinkMessage::DelLink(named(name)), 0) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Gives link `name` IPv4 address `addr`/`prefix` (`ip addr add
    /// ADDR/PREFIX dev NAME`).
    pub fn add_address(&mut self, name: &str, addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
        let index = self.link(name)?.ok_or_else(|| io::Error::from_raw_os_error(libc::ENODEV))?.index;
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix;
        m.header.index = index;
        m.attributes.push(AddressAttribute::Local(addr.into()));
        m.attributes.push(AddressAttribute::Address(addr.into()));
        self.ack(RouteNetlinkMessage::NewAddress(m), NLM_F_CREATE | NLM_F_EXCL)
    }
}

/// A link message naming its link by name (the kernel looks a link up by
/// IFLA_IFNAME when the index is 0).
fn named(name: &str) -> LinkMessage {
    let mut m = LinkMessage::default();
    m.attributes.push(LinkAttribute::IfName(name.to_string()));
    m
}

fn link_of(l: &LinkMessage) -> Link {
    let mut link = Link { index: l.header.index, name: String::new(), master: None, kind: None };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Controller(m) if *m != 0 => link.master = Some(*m),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// Runs `f` with a socket of network namespace `ns` (a descriptor of it),
/// on a thread that entered it; of the calling thread's namespace when
/// `ns` is None.
pub fn in_netns<T: Send>(ns: Option<BorrowedFd<'_>>, f: impl FnOnce(&mut Rtnl) -> io::Result<T> + Send) -> io::Result<T> {
    match ns {
        None => f(&mut Rtnl::open()?),
        Some(fd) => lpm_sys::net::in_netns(fd, || f(&mut Rtnl::open()?)).map_err(|e| io::Error::other(e.to_string()))?,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    /// Everything in a namespace of its own: a bridge, a veth pair with
    /// its peer moved to a second namespace with a MAC and an address,
    /// the port made quiet, the links deleted.
    #[test]
    fn links_and_addresses_in_namespaces() {
        let a = lpm_sys::net::new_netns().unwrap();
        let b = lpm_sys::net::new_netns().unwrap();
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let b_fd = b.as_fd();
        in_netns(Some(a.as_fd()), |r| {
            r.add_bridge("br9")?;
            r.set_up("br9")?;
            r.add_veth("ve9", "eth0", Some(mac), Some(b_fd))?;
            r.set_master("ve9", Some("br9"))?;
            r.quiet_bridge_port("ve9")?;
            r.set_up("ve9")?;
            let links = r.links()?;
            let br = links.iter().find(|l| l.name == "br9").expect("the bridge");
            assert_eq!(br.kind.as_deref(), Some("bridge"));
            let ve = r.link("ve9")?.expect("the veth");
            assert_eq!((ve.master, ve.kind.as_deref()), (Some(br.index), Some("veth")));
            assert!(r.link("eth0")?.is_none(), "the peer went to the other namespace");
            assert_eq!(r.add_bridge("br9").unwrap_err().raw_os_error(), Some(libc::EEXIST));
            r.set_master("ve9", None)?;
            assert_eq!(r.link("ve9")?.unwrap().master, None);
            assert!(r.delete("ve9")?);
            assert!(!r.delete("ve9")?);
            Ok(())
        })
        .unwrap();
        in_netns(Some(b.as_fd()), |r| {
            // Deleting one end took the other.
            assert!(r.link("eth0")?.is_none());
            Ok(())
        })
        .unwrap();
        let c = lpm_sys::net::new_netns().unwrap();
        let c_fd = c.as_fd();
        in_netns(Some(a.as_fd()), |r| r.add_veth("ve8", "eth0", Some(mac), Some(c_fd))).unwrap();
        in_netns(Some(c.as_fd()), |r| {
            r.set_up("lo")?;
            r.add_address("eth0", Ipv4Addr::new(10, 9, 8, 7), 24)?;
            r.set_up("eth0")?;
            assert_eq!(r.add_address("eth0", Ipv4Addr::new(10, 9, 8, 7), 24).unwrap_err().raw_os_error(), Some(libc::EEXIST));
            assert_eq!(r.add_address("nosuch0", Ipv4Addr::new(10, 9, 8, 7), 24).unwrap_err().raw_os_error(), Some(libc::ENODEV));
            Ok(())
        })
        .unwrap();
        // What iproute2 shows of it: the same as its own commands made.
        let shown =
            lpm_sys::net::in_netns(c.as_fd(), || std::process::Command::new("ip").args(["-o", "addr", "show", "dev", "eth0"]).output())
                .unwrap()
                .unwrap();
        let shown = String::from_utf8_lossy(&shown.stdout);
        assert!(shown.contains("inet 10.9.8.7/24"), "{shown}");
        let link =
            lpm_sys::net::in_netns(c.as_fd(), || std::process::Command::new("ip").args(["-o", "link", "show", "dev", "eth0"]).output())
                .unwrap()
                .unwrap();
        assert!(String::from_utf8_lossy(&link.stdout).contains("02:11:22:33:44:55"), "{}", String::from_utf8_lossy(&link.stdout));
    }
}
