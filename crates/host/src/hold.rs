//! Holding a partition's incoming traffic while a migration stops it, so
//! that no packet sent to it then is dropped: the sender does not wait for
//! a retransmission (TCP's 200 ms minimum, 1 s for a connection request),
//! and a datagram (UDP) is not lost.
//!
//! Each partition being moved out gets a hold port: a veth pair whose one
//! end (`lh…`) is a port of the host's partition bridge that learns
//! nothing and is flooded nothing, so no frame reaches it by itself, and
//! whose other end (`lg…`) has a packet socket ([`FrameTrap`]) keeping
//! what arrives. [`Hold::engage`] moves the partition's MAC address to the
//! hold port in the bridge's forwarding database, in one request, as a
//! sticky static entry: from that instant every frame for the partition
//! is kept in the socket's queue instead of reaching it, and none reaches
//! both. The partition's own frames still go out until the network is
//! locked (its veth off the bridge), after its last stop. Connection
//! requests are held from earlier, from the drain before the stop
//! ([`Hold::hold_connection_requests`]).
//!
//! The frames are let go once the outcome is known, exactly once, to the
//! copy that runs:
//! - to the target ([`Toward::Network`]), once the target's copy runs and
//!   has announced its address (gratuitous ARP): the entry goes and each
//!   frame is sent back into the bridge from the hold port, its source
//!   address the hold port's own (a switch must not learn the sender's
//!   address on this host's link), and the bridge forwards it to where
//!   the partition now is;
//! - to the source's copy ([`Toward::Partition`]) when the migration rolls
//!   back, straight out of its veth, after the veth is back on the bridge
//!   and the entry gone.
//!
//! What the hold cannot keep: frames beyond the socket's buffer (32 MiB;
//! counted and logged), frames arriving on this host after they were let
//! go toward the target (the network still sending the partition's
//! traffic here after its announcement), and everything held when the
//! source's lpmd dies (the socket dies with it; the port is removed when
//! the migration is resumed). Broadcasts (an ARP request from a neighbour
//! with no entry for the partition) are not held: they reach the
//! partition until its network is locked, then no one.

use lpm_sys::l2::{self, FrameTrap, VNET_HDR_LEN};

use crate::net::{self, NetError};

/// Where held frames go when they are let go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Toward {
    /// Into the bridge, to wherever the network now sends the partition's
    /// address (the target's copy runs).
    Network,
    /// Into the partition's own veth (the migration rolled back).
    Partition,
}

/// What [`Hold::release`] let go of.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Released {
    /// Frames sent on.
    pub frames: usize,
    /// Their bytes (Ethernet frames, a GSO frame counted whole).
    pub bytes: u64,
    /// Frames the hold could not keep (its buffer was full, a frame too
    /// large) or send on: lost as on a locked network.
    pub lost: u32,
}

/// The names of the hold port of the partition whose host-side veth is
/// `veth` (`lp` + 8 hex digits): the bridge's end (`lh…`) and the trap's
/// (`lg…`).
pub fn port_names(veth: &str) -> (String, String) {
    let tail = veth.strip_prefix("lp").unwrap_or(veth);
    (format!("lh{tail}"), format!("lg{tail}"))
}

/// Removes the hold port of the partition whose host-side veth is `veth`
/// (and with it the bridge's entry for the partition's MAC there, and the
/// rule of [`Hold::hold_connection_requests`]); none there is fine, so it
/// may be repeated.
pub fn remove_port(veth: &str) -> Result<(), NetError> {
    let (port, _) = port_names(veth);
    if lpm_sys::net::if_index(&port).is_ok() {
        drop_rule(veth)?;
        net::rtnl(None, &port, "delete", |r| r.delete(&port))?;
    }
    Ok(())
}

/// The nftables table of [`Hold::hold_connection_requests`].
fn table(veth: &str) -> String {
    format!("lpm_hold_{}", veth.strip_prefix("lp").unwrap_or(veth))
}

/// Removes the rule of [`Hold::hold_connection_requests`]; none there is
/// fine.
fn drop_rule(veth: &str) -> Result<(), NetError> {
    let t = table(veth);
    net::nft_here(&format!("table netdev {t} {{}}\ndelete table netdev {t}\n"))
}

/// A partition's hold port, with the trap keeping its frames.
#[derive(Debug)]
pub struct Hold {
    veth: String,
    port: String,
    peer: String,
    mac: [u8; 6],
    trap: FrameTrap,
    engaged: bool,
}

fn sys_err<'a>(ifname: &'a str, op: &'static str) -> impl FnOnce(lpm_sys::Error) -> NetError + 'a {
    move |source| NetError::Hold { ifname: ifname.to_string(), op, source }
}

/// A MAC address written `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl Hold {
    /// Builds the hold port of the partition whose host-side veth is
    /// `veth` on `bridge`, for its MAC `mac`, and opens its trap; nothing
    /// is held yet. A port left by an earlier attempt is replaced. On
    /// failure nothing is left behind.
    pub fn prepare(veth: &str, bridge: &str, mac: [u8; 6]) -> Result<Hold, NetError> {
        remove_port(veth)?;
        let (port, peer) = port_names(veth);
        let r = (|| {
            net::rtnl(None, &port, "create veth pair", |r| r.add_veth(&port, &peer, None, None))?;
            // No IPv6 of their own (router solicitations, DAD): the port
            // sends nothing but what it is given.
            for ifname in [&port, &peer] {
                let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
                if std::path::Path::new(&path).exists() {
                    let _ = std::fs::write(&path, "1");
                }
            }
            net::rtnl(None, &port, "put on the bridge", |r| r.set_master(&port, Some(bridge)))?;
            // Nothing reaches the port by itself: it learns no address and
            // gets no flooded frame; only the entry of [`Hold::engage`]
            // sends it frames.
            net::rtnl(None, &port, "quiet the bridge port", |r| r.quiet_bridge_port(&port))?;
            net::rtnl(None, &peer, "bring up", |r| r.set_up(&peer))?;
            net::rtnl(None, &port, "bring up", |r| r.set_up(&port))?;
            FrameTrap::open(&peer, mac).map_err(sys_err(&peer, "open the packet socket that keeps the frames"))
        })();
        match r {
            Ok(trap) => Ok(Hold { veth: veth.to_string(), port, peer, mac, trap, engaged: false }),
            Err(e) => {
                let _ = remove_port(veth);
                Err(e)
            }
        }
    }

    /// From now on every connection request (TCP SYN without ACK) for the
    /// partition is held, while the rest still reaches it: the drain
    /// before the stop, so that no handshake is under way when it stops,
    /// and none waits for a SYN retransmission. An nftables rule at the
    /// egress hook of the partition's veth (in this namespace) forwards
    /// them to the hold port.
    pub fn hold_connection_requests(&self) -> Result<(), NetError> {
        let t = table(&self.veth);
        net::nft_here(&format!(
            "table netdev {t} {{}}\ndelete table netdev {t}\ntable netdev {t} {{\n  chain syn {{\n    type filter hook egress device \"{}\" priority 0; policy accept;\n    tcp flags & (syn | ack) == syn fwd to \"{}\"\n  }}\n}}\n",
            self.veth, self.port
        ))
    }

    /// From now on every frame for the partition is held (one rtnetlink
    /// request: the bridge's entry for its MAC moves to the hold port).
    pub fn engage(&mut self) -> Result<(), NetError> {
        l2::fdb_pin(&self.port, self.mac).map_err(sys_err(&self.port, "send the partition's frames to the hold port"))?;
        self.engaged = true;
        Ok(())
    }

    /// Whether [`Hold::engage`] ran.
    pub fn engaged(&self) -> bool {
        self.engaged
    }

    /// Lets every held frame go `toward` where the partition runs, once,
    /// and stops holding; the port (and toward the network the rule of
    /// [`Hold::hold_connection_requests`]) stays until [`remove_port`] (or
    /// the partition's plumbing goes). For [`Toward::Partition`] the
    /// partition's veth must be back on its bridge.
    pub fn release(mut self, toward: Toward) -> Result<Released, NetError> {
        // The rule (before frames are sent into the veth, or the
        // requests among them would come back) and the entry first:
        // frames arriving from here on go where the bridge sends them
        // (the partition's veth, or out to the network), and the queue
        // only shrinks. Toward the network the rule, which no frame
        // meets any more (the veth is off the bridge), stays until the
        // port goes ([`remove_port`], with the copy that left): it costs
        // a process, which the held requests need not wait for.
        if toward == Toward::Partition {
            drop_rule(&self.veth)?;
        }
        l2::fdb_unpin(&self.port, self.mac).map_err(sys_err(&self.port, "stop sending the partition's frames to the hold port"))?;
        self.engaged = false;
        let (frames, cut) = self.trap.take().map_err(sys_err(&self.peer, "take the held frames"))?;
        let lost = cut + self.trap.dropped().map_err(sys_err(&self.peer, "count the frames the hold dropped"))?;
        let (ifindex, own) = match toward {
            Toward::Network => {
                let own = port_mac(&self.peer)?;
                (self.trap.ifindex(), Some(own))
            }
            Toward::Partition => (lpm_sys::net::if_index(&self.veth).map_err(sys_err(&self.veth, "find the partition's veth"))?, None),
        };
        let mut out = Released { lost, ..Released::default() };
        for mut f in frames {
            if let (Some(own), Some(src)) = (own, f.get_mut(VNET_HDR_LEN + 6..VNET_HDR_LEN + 12)) {
                src.copy_from_slice(&own);
            }
            // One frame the kernel refuses (a link gone meanwhile) does
            // not keep the others.
            match self.trap.send(ifindex, &f) {
                Ok(()) => {
                    out.frames += 1;
                    out.bytes += f.len().saturating_sub(VNET_HDR_LEN) as u64;
                }
                Err(_) => out.lost += 1,
            }
        }
        Ok(out)
    }
}

/// The MAC address of interface `ifname` of this network namespace.
fn port_mac(ifname: &str) -> Result<[u8; 6], NetError> {
    use std::os::fd::AsFd;
    // Any socket of the namespace answers (/sys may show another one's).
    let sock = lpm_sys::net::socket(libc::AF_INET, libc::SOCK_DGRAM, 0).map_err(sys_err(ifname, "open a socket"))?;
    lpm_sys::arp::if_hwaddr(sock.as_fd(), ifname).map_err(sys_err(ifname, "read the hold port's address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_macs() {
        assert_eq!(port_names("lp0123abcd"), ("lh0123abcd".to_string(), "lg0123abcd".to_string()));
        assert_eq!(parse_mac("02:ab:00:01:ff:10"), Some([2, 0xab, 0, 1, 0xff, 0x10]));
        assert_eq!(parse_mac("02:ab:00:01:ff"), None);
        assert_eq!(parse_mac("02:ab:00:01:ff:10:11"), None);
    }
}
