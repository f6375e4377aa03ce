//! Ethernet-level plumbing for holding a partition's traffic during a
//! migration's stop: static entries of a bridge's forwarding database
//! (which port a MAC address is sent to), and a packet socket that keeps
//! the frames a port receives until they are sent on.
//!
//! Built from the safe calls of [`crate::net`]: no unsafe code here.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use crate::{net, Error, Result};

const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const NDA_LLADDR: u16 = 2;
const NLMSG_ERROR: u16 = 2;
const NUD_NOARP: u16 = 0x40;
const NTF_MASTER: u8 = 0x04;
const NTF_STICKY: u8 = 0x40;
/// `ETH_P_ALL`: every protocol.
const ETH_P_ALL: u16 = 0x0003;
const SOL_PACKET: i32 = 263;
const PACKET_STATISTICS: i32 = 6;
const PACKET_VNET_HDR: i32 = 15;
const PACKET_IGNORE_OUTGOING: i32 = 23;
/// The `struct virtio_net_hdr` each frame of a [`FrameTrap`] starts with:
/// its GSO and checksum state, so a frame taken whole (a TCP segment of
/// 64 KiB a local sender's offload left unsegmented, a checksum left to
/// the device) is sent on as it came.
pub const VNET_HDR_LEN: usize = 10;
/// The largest frame kept: a GSO frame is at most 64 KiB of IP packet.
const FRAME_MAX: usize = 65536 + 14 + VNET_HDR_LEN + 256;
/// The socket's receive buffer: what can wait while a partition is
/// stopped (the kernel counts each frame's whole buffer against it).
const TRAP_RCVBUF: i32 = 32 << 20;

fn sys(op: &'static str, errno: i32) -> Error {
    Error::sys(op, 0, io::Error::from_raw_os_error(errno))
}

/// Asks rtnetlink for one change and reads its acknowledgement: the
/// errno it carries, 0 for success.
fn rtnetlink(req: &[u8], op: &'static str) -> Result<i32> {
    let nl = net::socket(libc::AF_NETLINK, libc::SOCK_DGRAM, libc::NETLINK_ROUTE)?;
    let mut kernel = [0u8; 12];
    kernel[..2].copy_from_slice(&(libc::AF_NETLINK as u16).to_ne_bytes());
    net::send(nl.as_fd(), req, &kernel, 0)?;
    let mut buf = vec![0u8; 4096];
    let got = net::recv(nl.as_fd(), &mut buf, 0)?;
    let b = &buf[..got.len];
    if b.len() >= 20 && u16::from_ne_bytes([b[4], b[5]]) == NLMSG_ERROR {
        return Ok(-i32::from_ne_bytes([b[16], b[17], b[18], b[19]]));
    }
    Err(sys(op, libc::EPROTO))
}

/// An `ndmsg` request for MAC `mac` on bridge port `port`.
fn fdb_request(ty: u16, flags: u16, port: &str, mac: [u8; 6], state: u16, ntf: u8) -> Result<Vec<u8>> {
    let index = net::if_index(port)?;
    // nlmsghdr (16) + ndmsg (12) + NDA_LLADDR (4 + 6, padded to 12).
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&ty.to_ne_bytes());
    req.extend_from_slice(&(flags | (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid
    req.extend_from_slice(&[libc::AF_BRIDGE as u8, 0, 0, 0]); // family, pad
    req.extend_from_slice(&(index as i32).to_ne_bytes());
    req.extend_from_slice(&state.to_ne_bytes());
    req.extend_from_slice(&[ntf, 0]); // flags, type
    req.extend_from_slice(&10u16.to_ne_bytes());
    req.extend_from_slice(&NDA_LLADDR.to_ne_bytes());
    req.extend_from_slice(&mac);
    req.extend_from_slice(&[0, 0]);
    Ok(req)
}

/// Makes the bridge of `port` send every frame for `mac` to `port`
/// (`bridge fdb replace MAC dev PORT master static sticky`), in one
/// rtnetlink request of the calling thread's network namespace: the
/// entry moves atomically from wherever the bridge had learnt `mac`, and,
/// sticky, no frame from `mac` arriving on another port moves it back.
pub fn fdb_pin(port: &str, mac: [u8; 6]) -> Result<()> {
    let flags = (libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    let req = fdb_request(RTM_NEWNEIGH, flags, port, mac, NUD_NOARP, NTF_MASTER | NTF_STICKY)?;
    match rtnetlink(&req, "rtnetlink fdb add")? {
        0 => Ok(()),
        e => Err(sys("rtnetlink fdb add", e)),
    }
}

/// Removes the bridge's entry for `mac` on `port` (`bridge fdb del`);
/// none there is fine.
pub fn fdb_unpin(port: &str, mac: [u8; 6]) -> Result<()> {
    let req = fdb_request(RTM_DELNEIGH, 0, port, mac, 0, NTF_MASTER)?;
    match rtnetlink(&req, "rtnetlink fdb del")? {
        0 | libc::ENOENT => Ok(()),
        e => Err(sys("rtnetlink fdb del", e)),
    }
}

/// A packet socket that keeps the frames for one MAC address arriving on
/// one interface, until they are taken and sent on: a queue in the kernel
/// that nothing reads while a partition is stopped.
#[derive(Debug)]
pub struct FrameTrap {
    sock: OwnedFd,
    ifindex: u32,
}

/// The classic BPF program keeping only frames whose destination is `mac`.
fn dst_filter(mac: [u8; 6]) -> Vec<u8> {
    let insn = |code: u16, jt: u8, jf: u8, k: u32| {
        let mut b = Vec::with_capacity(8);
        b.extend_from_slice(&code.to_ne_bytes());
        b.extend_from_slice(&[jt, jf]);
        b.extend_from_slice(&k.to_ne_bytes());
        b
    };
    [
        insn(0x20, 0, 0, 0),                                                    // ld [0]
        insn(0x15, 0, 3, u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]])), // jeq
        insn(0x28, 0, 0, 4),                                                    // ldh [4]
        insn(0x15, 0, 1, u32::from(u16::from_be_bytes([mac[4], mac[5]]))),      // jeq
        insn(0x06, 0, 0, FRAME_MAX as u32),                                     // ret all
        insn(0x06, 0, 0, 0),                                                    // ret 0
    ]
    .concat()
}

fn sockaddr_ll(protocol: u16, ifindex: u32, dst: Option<[u8; 6]>) -> Vec<u8> {
    // struct sockaddr_ll: family, protocol (network order), ifindex,
    // hatype, pkttype, halen, addr[8].
    let mut a = Vec::with_capacity(20);
    a.extend_from_slice(&(libc::AF_PACKET as u16).to_ne_bytes());
    a.extend_from_slice(&protocol.to_be_bytes());
    a.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    a.extend_from_slice(&0u16.to_ne_bytes());
    a.push(0);
    a.push(if dst.is_some() { 6 } else { 0 });
    let mut addr = [0u8; 8];
    if let Some(d) = dst {
        addr[..6].copy_from_slice(&d);
    }
    a.extend_from_slice(&addr);
    a
}

impl FrameTrap {
    /// Starts keeping the frames for `mac` that interface `ifname` (of the
    /// calling thread's network namespace) receives, with their
    /// [`VNET_HDR_LEN`] header. Frames it sends itself are not kept.
    pub fn open(ifname: &str, mac: [u8; 6]) -> Result<FrameTrap> {
        let ifindex = net::if_index(ifname)?;
        // Protocol 0: nothing is queued before the filter is on and the
        // socket bound to its one interface.
        let sock = net::socket(libc::AF_PACKET, libc::SOCK_RAW, 0)?;
        let fd = sock.as_fd();
        net::setsockopt_int(fd, SOL_PACKET, PACKET_VNET_HDR, 1)?;
        net::setsockopt_int(fd, SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)?;
        net::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, TRAP_RCVBUF)?;
        net::attach_filter(fd, &dst_filter(mac))?;
        net::bind(fd, &sockaddr_ll(ETH_P_ALL, ifindex, None))?;
        Ok(FrameTrap { sock, ifindex })
    }

    /// The interface the frames arrive on.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Takes every frame kept so far, oldest first, each with its
    /// [`VNET_HDR_LEN`] header; and how many did not fit (too large for
    /// the buffer: should be none).
    pub fn take(&self) -> Result<(Vec<Vec<u8>>, u32)> {
        let mut frames = Vec::new();
        let mut cut = 0;
        let mut buf = vec![0u8; FRAME_MAX];
        loop {
            match net::recv(self.sock.as_fd(), &mut buf, libc::MSG_DONTWAIT | libc::MSG_TRUNC) {
                Ok(r) if r.full > r.len => cut += 1,
                Ok(r) => frames.push(buf[..r.len].to_vec()),
                Err(e) if e.errno() == Some(libc::EAGAIN) => return Ok((frames, cut)),
                Err(e) => return Err(e),
            }
        }
    }

    /// How many frames the kernel dropped since the last call, for a
    /// full receive buffer (PACKET_STATISTICS, which resets them).
    pub fn dropped(&self) -> Result<u32> {
        let mut st = [0u8; 8];
        net::getsockopt(self.sock.as_fd(), SOL_PACKET, PACKET_STATISTICS, &mut st)?;
        Ok(u32::from_ne_bytes([st[4], st[5], st[6], st[7]]))
    }

    /// Sends `frame` (with its [`VNET_HDR_LEN`] header, as [`take`]
    /// gave it) out of interface `ifindex`.
    ///
    /// [`take`]: FrameTrap::take
    pub fn send(&self, ifindex: u32, frame: &[u8]) -> Result<()> {
        let eth = frame.get(VNET_HDR_LEN..VNET_HDR_LEN + 14).ok_or_else(|| sys("send a kept frame (too short)", libc::EINVAL))?;
        let proto = u16::from_be_bytes([eth[12], eth[13]]);
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&eth[..6]);
        net::send(self.sock.as_fd(), frame, &sockaddr_ll(proto, ifindex, Some(dst)), 0)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_and_requests_are_well_formed() {
        let f = dst_filter([2, 0x11, 0x22, 0x33, 0x44, 0x55]);
        assert_eq!(f.len(), 6 * 8);
        assert_eq!(&f[12..16], &0x0211_2233u32.to_ne_bytes());
        let a = sockaddr_ll(0x0800, 7, Some([1, 2, 3, 4, 5, 6]));
        assert_eq!(a.len(), 20);
        assert_eq!(&a[2..4], &[8, 0]);
        let r = fdb_request(RTM_NEWNEIGH, 0, "lo", [2, 0, 0, 0, 0, 1], NUD_NOARP, NTF_MASTER).unwrap();
        assert_eq!(r.len(), 40);
        assert_eq!(u32::from_ne_bytes(r[..4].try_into().unwrap()) as usize, r.len());
    }

    /// On a bridge of a namespace of its own: a frame for the pinned MAC
    /// reaches the trap, once, and only while pinned; the trap sends it
    /// on.
    #[test]
    fn pinned_frames_are_kept_and_sent_on() {
        let ns = net::new_netns().unwrap();
        net::in_netns(ns.as_fd(), || {
            let sh = |c: &str| assert!(std::process::Command::new("sh").args(["-c", c]).status().unwrap().success(), "{c}");
            sh("ip link add br0 type bridge && ip link add hX type veth peer name gX && ip link add pa type veth peer name pb \
                && ip link set hX master br0 && ip link set pa master br0 \
                && ip link set dev hX type bridge_slave learning off flood off mcast_flood off bcast_flood off \
                && for l in br0 hX gX pa pb; do ip link set $l up; done");
            let mac = [2, 0x11, 0x22, 0x33, 0x44, 0x55];
            let trap = FrameTrap::open("gX", mac).unwrap();
            let b = net::if_index("pb").unwrap();
            let frame = |n: u8| {
                let mut f = vec![0u8; VNET_HDR_LEN];
                f.extend_from_slice(&mac);
                f.extend_from_slice(&[2, 0, 0, 0, 0, 9, 0x88, 0xb5]); // source, a local experimental type
                f.extend_from_slice(&[n; 50]);
                f
            };
            let sender = FrameTrap::open("pb", [0xff; 6]).unwrap();
            sender.send(b, &frame(1)).unwrap();
            fdb_pin("hX", mac).unwrap();
            sender.send(b, &frame(2)).unwrap();
            fdb_unpin("hX", mac).unwrap();
            fdb_unpin("hX", mac).unwrap();
            sender.send(b, &frame(3)).unwrap();
            let (got, cut) = trap.take().unwrap();
            assert_eq!(cut, 0);
            assert_eq!(got.len(), 1, "only the frame sent while pinned: {got:?}");
            assert_eq!(got[0][VNET_HDR_LEN + 14], 2);
            assert_eq!(trap.dropped().unwrap(), 0);
            trap.send(trap.ifindex(), &got[0]).unwrap();
        })
        .unwrap();
    }
}
