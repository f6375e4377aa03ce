//! Packet sockets (AF_PACKET, SOCK_RAW and SOCK_DGRAM): the protocol given
//! to socket(2) and the one bound, the interface (by index, with its name,
//! inside the socket's network namespace), the PACKET_* options, the
//! fanout group, memberships (PACKET_ADD_MEMBERSHIP, each with its count)
//! and a classic BPF filter. Read with getsockopt and packet_diag (which
//! alone shows PACKET_COPY_THRESH and the memberships).
//!
//! Restore creates the socket with its protocol, sets the options, binds
//! it to the same interface index (refused when that index names another
//! interface there, or none), joins its fanout group (members join in the
//! order of the image) and adds its memberships.
//!
//! Refused by name: rings (PACKET_RX_RING, PACKET_TX_RING), whose
//! current frame the kernel keeps and shows nowhere (a ring made again
//! would be filled from its first frame while the program waits at its
//! own); fanout modes that run a program (PACKET_FANOUT_CBPF,
//! PACKET_FANOUT_EBPF), which no call reads back; a socket whose
//! interface is gone; queued packets and pending errors (at this moment).
//! Not kept: PACKET_STATISTICS, which reading resets; a fanout group's
//! UNIQUEID flag (its id is asked for as is), its member limit and the
//! order its members joined in, which no call shows.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use lpm_image::{Fd, FileImage, PacketImage, PacketMembership, Process, SocketImage, SocketState};
use lpm_sys::net;
use lpm_sys::remote::Remote;

use super::sockets;
use super::{FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{EngineError, Result, StepExt};

/// Packet sockets.
pub struct Packet;

const SOL_PACKET: i32 = 263;
const PACKET_ADD_MEMBERSHIP: i32 = 1;
const PACKET_COPY_THRESH: i32 = 7;
const PACKET_FANOUT: i32 = 18;
/// The fanout modes that run a program.
const PACKET_FANOUT_CBPF: u32 = 6;
const PACKET_FANOUT_EBPF: u32 = 7;
/// PACKET_FANOUT_FLAG_UNIQUEID, as the high byte of PACKET_FANOUT reads
/// it: the kernel chose the id, which is asked for as is at restore.
const FANOUT_FLAG_UNIQUEID: u32 = 0x20;

/// Options read back with getsockopt and set again before bind.
const OPTS: &[(i32, i32)] = &[
    (SOL_PACKET, 10), // PACKET_VERSION
    (SOL_PACKET, 12), // PACKET_RESERVE
    (SOL_PACKET, 8),  // PACKET_AUXDATA
    (SOL_PACKET, 9),  // PACKET_ORIGDEV
    (SOL_PACKET, 14), // PACKET_LOSS
    (SOL_PACKET, 17), // PACKET_TIMESTAMP
    (SOL_PACKET, 20), // PACKET_QDISC_BYPASS
    (SOL_PACKET, 19), // PACKET_TX_HAS_OFF
    (SOL_PACKET, 23), // PACKET_IGNORE_OUTGOING
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_MARK),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO),
];

/// What the socket holds, or why it cannot be kept.
fn read(seen: &Seen) -> Result<SocketImage> {
    let s = sockets::take(seen)?;
    let fd = s.as_fd();
    let ty = sockets::opt_int(seen, fd, libc::SOL_SOCKET, libc::SO_TYPE, "SO_TYPE")?;
    let proto = sockets::opt_int(seen, fd, libc::SOL_SOCKET, libc::SO_PROTOCOL, "SO_PROTOCOL")?;
    if ty != libc::SOCK_RAW && ty != libc::SOCK_DGRAM {
        return Err(seen.unsupported(format!("packet socket of type {ty}")));
    }
    let net_ns = sockets::netns_of(seen, fd)?;
    let ino = seen.st.ino();
    let d = sockets::in_task_netns(seen, || net::packet_diag(ino as u32))?
        .step(seen.pid, || format!("packet_diag for fd {}", seen.fd))?
        .ok_or_else(|| seen.unsupported("packet socket that packet_diag does not list"))?;
    if d.rx_ring || d.tx_ring {
        return Err(seen.unsupported(format!(
            "packet socket with a {} ring mapped: the kernel's place in it is not shown anywhere, so a restored ring would fill from elsewhere than the program reads",
            if d.rx_ring { "PACKET_RX_RING" } else { "PACKET_TX_RING" }
        )));
    }
    let fanout = sockets::opt_int(seen, fd, SOL_PACKET, PACKET_FANOUT, "PACKET_FANOUT")? as u32;
    let mode = (fanout >> 16) & 0xff;
    if fanout != 0 && (mode == PACKET_FANOUT_CBPF || mode == PACKET_FANOUT_EBPF) {
        return Err(seen.unsupported(format!(
            "packet socket in fanout group {} of mode {mode}, which runs a program no call reads back",
            fanout & 0xffff
        )));
    }
    let mut b = [0u8; 1];
    match net::recv(fd, &mut b, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Err(e) if e.errno() == Some(libc::EAGAIN) => {}
        _ => return Err(seen.transient("packet socket with packets queued")),
    }
    if net::poll_now(fd).step(seen.pid, || format!("poll fd {}", seen.fd))? & libc::POLLERR != 0 {
        return Err(seen.transient("packet socket with an error pending"));
    }
    if d.ifindex as i32 == -1 {
        // The kernel's mark of a socket whose interface was unregistered.
        return Err(seen.unsupported("packet socket bound to an interface that is gone"));
    }
    let ifname = if d.ifindex != 0 {
        sockets::in_task_netns(seen, || net::if_name(d.ifindex))?
            .step(seen.pid, || format!("name of interface {} of fd {}", d.ifindex, seen.fd))?
    } else {
        String::new()
    };
    let name = net::local_name(fd).step(seen.pid, || format!("getsockname fd {}", seen.fd))?;
    let (filter, filter_locked) = sockets::filter(seen, fd)?;
    let mut opts = sockets::read_opts(fd, OPTS);
    if ty == libc::SOCK_RAW {
        // PACKET_VNET_HDR, which only raw sockets take.
        opts.extend(sockets::read_opts(fd, &[(SOL_PACKET, 15)]));
    }
    if d.copy_thresh != 0 {
        opts.push(lpm_image::SockOpt { level: SOL_PACKET, name: PACKET_COPY_THRESH, value: (d.copy_thresh as i32).to_ne_bytes().to_vec() });
    }
    opts.extend(sockets::buffer_opts(fd, libc::AF_PACKET, ty, proto));
    // sockaddr_ll: family, protocol (network order), ifindex.
    let protocol = u16::from_ne_bytes([name.get(2).copied().unwrap_or(0), name.get(3).copied().unwrap_or(0)]) as u32;
    let packet = PacketImage {
        protocol,
        ifindex: d.ifindex,
        ifname,
        bound: d.ifindex != 0 || protocol != proto as u32,
        fanout: fanout & !(FANOUT_FLAG_UNIQUEID << 24),
        memberships: d
            .mclist
            .iter()
            .map(|(ifindex, count, mr_type, address)| PacketMembership {
                ifindex: *ifindex,
                mr_type: *mr_type as u32,
                address: address.clone(),
                count: *count,
            })
            .collect(),
    };
    Ok(SocketImage {
        ino,
        family: libc::AF_PACKET as u32,
        sock_type: ty as u32,
        protocol: proto as u32,
        net_ns,
        state: SocketState::Unconnected as i32,
        opts,
        filter,
        filter_locked,
        packet: Some(packet),
        owner_uid: seen.st.uid(),
        owner_gid: seen.st.gid(),
        ..Default::default()
    })
}

/// A raw `sockaddr_ll` bound to `protocol` (network order) on `ifindex`.
fn sockaddr(protocol: u32, ifindex: u32) -> Vec<u8> {
    let mut a = (libc::AF_PACKET as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(&(protocol as u16).to_ne_bytes());
    a.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    a.resize(20, 0);
    a
}

/// A raw `packet_mreq`.
fn mreq(m: &PacketMembership) -> Vec<u8> {
    let mut r = (m.ifindex as i32).to_ne_bytes().to_vec();
    r.extend_from_slice(&(m.mr_type as u16).to_ne_bytes());
    r.extend_from_slice(&(m.address.len().min(8) as u16).to_ne_bytes());
    let mut addr = m.address.clone();
    addr.resize(8, 0);
    r.extend_from_slice(&addr);
    r
}

impl Kind for Packet {
    fn check(&self, seen: &Seen, _f: &FileImage, _table: &FileTable) -> Result<()> {
        read(seen).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, _table: &mut FileTable) -> Result<()> {
        f.socket = Some(read(seen)?);
        Ok(())
    }

    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd> {
        let s = sockets::image(f)?;
        let p = s.packet.as_ref().ok_or_else(|| EngineError::Incompatible(format!("packet socket file {} has no packet state", f.id)))?;
        let err = |what: String| {
            let what = format!("packet socket file {}: {what}", f.id);
            move |source| EngineError::Step { pid: 0, step: what, source }
        };
        let (sock, here) = sockets::in_ns(cx, s.net_ns, || {
            let sock = net::socket_owned(libc::AF_PACKET, s.sock_type as i32, s.protocol as i32, s.owner_uid, s.owner_gid)?;
            let here = if p.ifindex != 0 { net::if_name(p.ifindex).ok() } else { None };
            Ok((sock, here))
        })?;
        if p.ifindex != 0 && here.as_deref() != Some(p.ifname.as_str()) {
            return Err(EngineError::Incompatible(format!(
                "packet socket file {}: bound to interface {} ({}), which is {} here",
                f.id,
                p.ifindex,
                p.ifname,
                here.map_or("no interface".to_string(), |n| format!("{n:?}"))
            )));
        }
        let fd = sock.as_fd();
        sockets::apply_opts(f, fd, &s.opts)?;
        if p.bound {
            net::bind(fd, &sockaddr(p.protocol, p.ifindex)).map_err(err(format!("bind to interface {} ({})", p.ifindex, p.ifname)))?;
        }
        if p.fanout != 0 {
            net::setsockopt_int(fd, SOL_PACKET, PACKET_FANOUT, p.fanout as i32).map_err(err(format!(
                "join fanout group {} (mode {})",
                p.fanout & 0xffff,
                (p.fanout >> 16) & 0xff
            )))?;
        }
        // packet_diag lists the newest first.
        for m in p.memberships.iter().rev() {
            for _ in 0..m.count.max(1) {
                net::setsockopt(fd, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mreq(m))
                    .map_err(err(format!("membership of type {} on interface {}", m.mr_type, m.ifindex)))?;
            }
        }
        sockets::apply_filter(f, fd, s)?;
        sockets::set_flags(f, &sock)?;
        Ok(sock)
    }

    fn install(&self, _pid: i32, _r: &mut Remote, _s: Scratch, _fd: &Fd, _f: &FileImage, _p: &Process) -> Result<()> {
        // Created whole in the restorer; nothing lives in the puppet's tables.
        Ok(())
    }
}
