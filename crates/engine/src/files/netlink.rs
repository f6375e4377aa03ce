//! Netlink sockets a program keeps open (NETLINK_ROUTE and the like):
//! protocol, bound port id and multicast groups. Restore creates the socket
//! in its network namespace, binds the same port id and joins the groups.
//! A socket with unread messages, or one connected to a destination, is
//! refused by name: what the kernel queued cannot be replayed.

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
fn read(seen: &Seen) -> Result<SocketImage> {
    let s = sockets::take(seen)?;
    let fd = s.as_fd();
    let ty = sockets::opt_int(seen, fd, libc::SOL_SOCKET, libc::SO_TYPE, "SO_TYPE")?;
    let proto = sockets::opt_int(seen, fd, libc::SOL_SOCKET, libc::SO_PROTOCOL, "SO_PROTOCOL")?;
    let net_ns = sockets::netns_of(seen, fd)?;
    let name = net::local_name(fd).step(seen.pid, || format!("getsockname fd {}", seen.fd))?;
    if let Ok(peer) = net::peer_name(fd) {
        if u32_at(&peer, 4) != 0 || u32_at(&peer, 8) != 0 {
            return Err(seen.unsupported(format!("netlink socket (protocol {proto}) connected to port {}", u32_at(&peer, 4))));
        }
    }
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
        state: SocketState::Unconnected as i32,
        nl_portid: u32_at(&name, 4),
        nl_groups: groups,
        opts: sockets::buffer_opts(fd, libc::AF_NETLINK, ty, proto),
        filter,
        filter_locked,
        ..Default::default()
    })
}

impl Kind for Netlink {
    fn check(&self, seen: &Seen, _f: &FileImage, _table: &FileTable) -> Result<()> {
        read(seen).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, _table: &mut FileTable) -> Result<()> {
        f.socket = Some(read(seen)?);
        Ok(())
    }

    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd> {
        let s = sockets::image(f)?;
        let sock = sockets::create(cx, s.net_ns, libc::AF_NETLINK, s.sock_type as i32, s.protocol as i32)?;
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
