//! Gratuitous ARP: the announcement a partition's new host sends after a
//! migration so that bridges relearn which port leads to the partition's MAC
//! and neighbours refresh their entry for its address.
//!
//! The kernel has no call for it (the `arp_notify` sysctl fires on link up,
//! not when a restored partition resumes), so the frame is built here and
//! sent on an `AF_PACKET` socket opened inside the partition's network
//! namespace.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use crate::{cvt, net, Error, Result};

/// `ETH_P_ARP`.
const ETH_P_ARP: u16 = 0x0806;
/// `ARPHRD_ETHER`: the hardware type of Ethernet-like links (veth, bridge).
const ARPHRD_ETHER: u16 = 1;
/// `ARPOP_REQUEST`.
pub const OP_REQUEST: u16 = 1;
/// `ARPOP_REPLY`.
pub const OP_REPLY: u16 = 2;
/// Length of an Ethernet header plus an IPv4-over-Ethernet ARP packet.
pub const FRAME_LEN: usize = 42;
/// The Ethernet broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// Builds a gratuitous ARP frame, broadcast, from `mac` for `ip`: sender
/// and target protocol address are both `ip`. The reply form carries `mac`
/// as target hardware address, as Linux requires to treat a reply as
/// gratuitous (`arp_is_garp`); the request form carries zeros (RFC 5227
/// announcement).
pub fn frame(op: u16, mac: [u8; 6], ip: Ipv4Addr) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&BROADCAST);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&ARPHRD_ETHER.to_be_bytes()); // htype
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // ptype IPv4
    f[18] = 6; // hlen
    f[19] = 4; // plen
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&mac); // sha
    f[28..32].copy_from_slice(&ip.octets()); // spa
    if op == OP_REPLY {
        f[32..38].copy_from_slice(&mac); // tha
    }
    f[38..42].copy_from_slice(&ip.octets()); // tpa
    f
}

/// The index of interface `ifname` (SIOCGIFINDEX), through any socket of
/// its namespace.
pub fn if_index(sock: BorrowedFd, ifname: &str) -> Result<i32> {
    let mut r = ifreq(ifname)?;
    // SAFETY: SIOCGIFINDEX reads the name and writes the index member of the
    // ifreq we pass, which lives for the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX as _, &mut r) }).map_err(|e| Error::sys("SIOCGIFINDEX", 0, e))?;
    // SAFETY: the kernel filled the ifindex member of the union.
    Ok(unsafe { r.ifr_ifru.ifru_ifindex })
}

/// The Ethernet address of interface `ifname` (SIOCGIFHWADDR), through any
/// socket of its namespace; EPROTONOSUPPORT when the link is not
/// Ethernet-like.
pub fn if_hwaddr(sock: BorrowedFd, ifname: &str) -> Result<[u8; 6]> {
    let mut r = ifreq(ifname)?;
    // SAFETY: SIOCGIFHWADDR reads the name and writes the hwaddr member of
    // the ifreq we pass, which lives for the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut r) }).map_err(|e| Error::sys("SIOCGIFHWADDR", 0, e))?;
    // SAFETY: the kernel filled the hwaddr member of the union.
    let sa = unsafe { r.ifr_ifru.ifru_hwaddr };
    if sa.sa_family != ARPHRD_ETHER {
        return Err(Error::sys("SIOCGIFHWADDR (not an ethernet link)", 0, io::Error::from_raw_os_error(libc::EPROTONOSUPPORT)));
    }
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

fn ifreq(name: &str) -> Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(Error::sys("interface name", 0, io::Error::from_raw_os_error(libc::EINVAL)));
    }
    // SAFETY: ifreq is plain data; zero is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

/// Sends `frames` on interface `ifindex` through packet socket `sock`, to
/// the Ethernet broadcast address.
fn send_frames(sock: BorrowedFd, ifindex: i32, frames: &[[u8; FRAME_LEN]]) -> Result<()> {
    // SAFETY: sockaddr_ll is plain data; zero is a valid value.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_protocol = ETH_P_ARP.to_be();
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    to.sll_addr[..6].copy_from_slice(&BROADCAST);
    for f in frames {
        // SAFETY: the frame and the address are readable buffers of the
        // lengths passed, alive for the call.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                f.as_ptr().cast(),
                f.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        cvt(n as i64).map_err(|e| Error::sys("sendto(AF_PACKET)", 0, e))?;
    }
    Ok(())
}

/// Announces `ip` on interface `ifname` of network namespace `ns`: `rounds`
/// times, `interval` apart, a gratuitous ARP request and a gratuitous ARP
/// reply (peers differ in which form they honour), both from the
/// interface's own MAC. The work runs on a short-lived thread that joins
/// `ns`, so the caller's threads stay where they are. Fails when the
/// interface is missing, down (ENETDOWN) or not Ethernet-like.
pub fn announce(ns: BorrowedFd, ifname: &str, ip: Ipv4Addr, rounds: usize, interval: Duration) -> Result<()> {
    let a = Announcer::open(ns, ifname, ip)?;
    for i in 0..rounds {
        if i > 0 {
            std::thread::sleep(interval);
        }
        a.send()?;
    }
    Ok(())
}

/// A gratuitous ARP made ready ahead: its packet socket open in the
/// namespace, its frames built. Opening one takes a thread that enters
/// the namespace, and closing one waits out an RCU grace period (the
/// kernel's packet_release): a migration's target opens it before the
/// stop and drops it after, so that announcing the moved partition in
/// the stop is two sends.
#[derive(Debug)]
pub struct Announcer {
    sock: OwnedFd,
    ifindex: i32,
    frames: [[u8; FRAME_LEN]; 2],
}

impl Announcer {
    /// Opens the socket in namespace `ns` for interface `ifname`, to
    /// announce `ip` at that interface's address.
    pub fn open(ns: BorrowedFd, ifname: &str, ip: Ipv4Addr) -> Result<Announcer> {
        net::in_netns(ns, || -> Result<Announcer> {
            // Protocol 0: it sends, and receives nothing meanwhile.
            let sock = net::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
            let ifindex = if_index(sock.as_fd(), ifname)?;
            let mac = if_hwaddr(sock.as_fd(), ifname)?;
            Ok(Announcer { sock, ifindex, frames: [frame(OP_REQUEST, mac, ip), frame(OP_REPLY, mac, ip)] })
        })?
    }

    /// Sends one announcement (a request and a reply).
    pub fn send(&self) -> Result<()> {
        send_frames(self.sock.as_fd(), self.ifindex, &self.frames)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        let ip = Ipv4Addr::new(10, 213, 1, 10);
        let req = frame(OP_REQUEST, mac, ip);
        assert_eq!(&req[0..6], &BROADCAST);
        assert_eq!(&req[6..12], &mac);
        assert_eq!(&req[12..14], &[0x08, 0x06]);
        assert_eq!(&req[14..22], &[0, 1, 8, 0, 6, 4, 0, 1]);
        assert_eq!(&req[22..28], &mac);
        assert_eq!(&req[28..32], &[10, 213, 1, 10]);
        assert_eq!(&req[32..38], &[0; 6]);
        assert_eq!(&req[38..42], &[10, 213, 1, 10]);
        let rep = frame(OP_REPLY, mac, ip);
        assert_eq!(&rep[20..22], &[0, 2]);
        assert_eq!(&rep[32..38], &mac);
    }

    #[test]
    fn announce_on_loopback_is_refused_by_name() {
        // lo is not Ethernet-like: the hardware address check must refuse it
        // instead of sending a malformed frame.
        let ns = net::new_netns().unwrap();
        let e = announce(ns.as_fd(), "lo", Ipv4Addr::new(127, 0, 0, 1), 1, Duration::ZERO).unwrap_err();
        assert_eq!(e.errno(), Some(libc::EPROTONOSUPPORT), "{e}");
        let e = announce(ns.as_fd(), "nosuchif0", Ipv4Addr::new(127, 0, 0, 1), 1, Duration::ZERO).unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENODEV), "{e}");
    }
}
