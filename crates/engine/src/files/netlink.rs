//! Netlink sockets a program keeps open (NETLINK_ROUTE and the like):
//! protocol, bound port id, multicast groups, and the destination it is
//! connected to (connect(2) to the kernel's port 0 or to a port id of a
//! socket of the tree, with a group or not), read from netlink_diag: a
//! socket connected to the kernel reads the same as an unconnected one
//! through getpeername, yet takes unicasts from the kernel only. Restore
//! creates the socket in its network namespace, binds the same port id,
//! joins the groups and connects again.
//!
//! Refused by name: a socket connected to a port id no socket of the tree
//! holds (the peer does not move with it), and one with unread messages:
//! each carries its sender's port id and credentials, which no message
//! sent from user space can have as the kernel's, and netlink has no peek
//! offset to read past the first.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use lpm_image::{Fd, FileImage, Process, SocketImage, SocketState};
use lpm_sys::net;
use lpm_sys::remote::Remote;

use super::sockets;
use super::{FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{EngineError, Result, StepExt};

/// Netlink sockets.
pub struct Netlink;

/// `NETLINK_ADD_MEMBERSHIP`.
const NETLINK_ADD_MEMBERSHIP: i32 = 1;

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map(|x| u32::from_ne_bytes(x.try_into().unwrap_or_default())).unwrap_or(0)
}

fn sockaddr(portid: u32, groups: u32) -> Vec<u8> {
    let mut a = (libc::AF_NETLINK as u16).to_ne_bytes().to_vec();
    a.extend_from_slice(&[0, 0]);
    a.extend_from_slice(&portid.to_ne_bytes());
    a.extend_from_slice(&groups.to_ne_bytes());
    a
}

/// The socket's protocol, port id and groups, or why it cannot be kept.
fn read(seen: &Seen, table: &FileTable) -> Result<SocketImage> {
    let s = sockets::take(seen)?;
    let fd = s.as_fd();
    let ty = sockets::opt_int(seen, fd, libc::SOL_SOCKET, libc::SO_TYPE, "SO_TYPE")?;
    let proto = sockets::opt_int(seen, fd, libc::SOL_SOCKET, libc::SO_PROTOCOL, "SO_PROTOCOL")?;
    let net_ns = sockets::netns_of(seen, fd)?;
    let name = net::local_name(fd).step(seen.pid, || format!("getsockname fd {}", seen.fd))?;
    let ino = seen.st.ino();
    let all = sockets::in_task_netns(seen, net::netlink_diag)?.step(seen.pid, || format!("netlink_diag for fd {}", seen.fd))?;
    let me = all.iter().find(|d| d.ino as u64 == ino);
    let (state, peer_portid, peer_groups) = match me {
        Some(d) if d.state == 1 => {
            if d.dst_portid != 0 {
                let peer = all.iter().find(|p| p.protocol == d.protocol && p.portid == d.dst_portid);
                if peer.and_then(|p| sockets::holder(table, p.ino as u64)).is_none() {
                    return Err(seen.unsupported(format!(
                        "netlink socket (protocol {proto}) connected to port {}, which no socket of the tree holds",
                        d.dst_portid
                    )));
                }
            }
            let mask = if d.dst_group > 0 && d.dst_group <= 32 { 1u32 << (d.dst_group - 1) } else { 0 };
            (SocketState::Connected, d.dst_portid, mask)
        }
        _ => (SocketState::Unconnected, 0, 0),
    };
    let mut b = [0u8; 16];
    match net::recv(fd, &mut b, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Err(e) if e.errno() == Some(libc::EAGAIN) => {}
        // The first message's type says what the program was told
        // and has not read yet (RTM_NEWLINK 16, RTM_NEWADDR 20, ...).
        _ => {
            let ty = u16::from_ne_bytes([b[4], b[5]]);
            return Err(seen.transient(format!("netlink socket (protocol {proto}) with unread messages (the first of type {ty})")));
        }
    }
    let (filter, filter_locked) = sockets::filter(seen, fd)?;
    let mut groups = Vec::new();
    let mut bits = [0u8; 128];
    if let Ok(n) = net::getsockopt(fd, libc::SOL_NETLINK, net::NETLINK_LIST_MEMBERSHIPS, &mut bits) {
        for (i, byte) in bits[..n].iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    groups.push((i * 8 + bit + 1) as u32);
                }
            }
        }
    }
    Ok(SocketImage {
        ino: seen.st.ino(),
        family: libc::AF_NETLINK as u32,
        sock_type: ty as u32,
        protocol: proto as u32,
        net_ns,
        state: state as i32,
        nl_portid: u32_at(&name, 4),
        nl_peer_portid: peer_portid,
        nl_peer_groups: peer_groups,
        owner_uid: seen.st.uid(),
        owner_gid: seen.st.gid(),
        nl_groups: groups,
        opts: sockets::buffer_opts(fd, libc::AF_NETLINK, ty, proto),
        filter,
        filter_locked,
        ..Default::default()
    })
}

impl Kind for Netlink {
    fn check(&self, seen: &Seen, _f: &FileImage, table: &FileTable) -> Result<()> {
        read(seen, table).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()> {
        f.socket = Some(read(seen, table)?);
        Ok(())
    }

    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd> {
        let s = sockets::image(f)?;
        let sock = sockets::create_owned(cx, s, libc::AF_NETLINK, s.sock_type as i32, s.protocol as i32)?;
        let fd = sock.as_fd();
        let err = |what: String| {
            let what = format!("netlink socket file {} (protocol {}): {what}", f.id, s.protocol);
            move |source| EngineError::Step { pid: 0, step: what, source }
        };
        if s.nl_portid != 0 {
            net::bind(fd, &sockaddr(s.nl_portid, 0)).map_err(err(format!("bind port id {}", s.nl_portid)))?;
        }
        for &g in &s.nl_groups {
            net::setsockopt_int(fd, libc::SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, g as i32).map_err(err(format!("join group {g}")))?;
        }
        if s.state == SocketState::Connected as i32 {
            net::connect(fd, &sockaddr(s.nl_peer_portid, s.nl_peer_groups))
                .map_err(err(format!("connect to port id {} groups {:#x}", s.nl_peer_portid, s.nl_peer_groups)))?;
        }
        sockets::apply_opts(f, fd, &s.opts)?;
        sockets::apply_filter(f, fd, s)?;
        sockets::set_flags(f, &sock)?;
        Ok(sock)
    }

    fn install(&self, _pid: i32, _r: &mut Remote, _s: Scratch, _fd: &Fd, _f: &FileImage, _p: &Process) -> Result<()> {
        // Created whole in the restorer; nothing lives in the puppet's tables.
        Ok(())
    }
}
