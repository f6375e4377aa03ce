//! TCP, UDP, UDP-Lite, ICMP ("ping") and raw sockets over IPv4 and IPv6:
//! unbound, bound (to a non-local address too, with IP_FREEBIND or
//! IP_TRANSPARENT), listening, datagram sockets connected, and
//! established TCP connections through TCP_REPAIR.
//!
//! A ping socket's identifier is its local port (bound again to it); it
//! is made at restore with a gid its namespace's ping_group_range allows
//! (`net::ping_socket`). A raw socket's local port is its protocol;
//! it is bound again only to a recorded address. Ping and raw sockets
//! connected with no port have no peer name: their peer comes from
//! /proc/net/{icmp,raw}{,6}.
//!
//! Dump works on a copy of the task's descriptor (pidfd_getfd): names,
//! options (a fixed list, raw getsockopt values), TCP_INFO for the state.
//! An established connection is read in repair mode: sequence numbers of
//! both queues (TCP_QUEUE_SEQ), both queues with MSG_PEEK (how much of the
//! send queue was never sent: SIOCOUTQNSD), the options the handshake
//! negotiated, the window (TCP_REPAIR_WINDOW) and the timestamp clock;
//! the socket leaves repair mode without a window probe and gets its
//! SO_REUSEADDR back (leaving repair mode clears it). A connection whose
//! peer is not held by the tree is refused unless the caller locked the
//! network (`CheckpointOptions::tcp_established`). Refused by name: other
//! TCP states (opening, closing), connections waiting in an accept queue,
//! queued UDP datagrams, raw and other protocols.
//!
//! Restore creates the socket inside its network namespace. A listener or
//! bound socket gets its options (SO_REUSEADDR, IPV6_V6ONLY ... before
//! bind), then bind, listen or connect. An established connection is
//! rebuilt in repair mode: queue sequence numbers, bind and connect (which
//! send nothing), negotiated options, timestamp, the queues (the sent part
//! of the send queue in repair mode, the unsent part after), window, repair
//! off, options. A listener on the same port is created before the
//! connections accepted from it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use lpm_image::{Fd, FileImage, FileKind, InetAddr, Process, SockOpt, SocketImage, SocketState, TcpConnImage, TcpState};
use lpm_sys::net;
use lpm_sys::remote::Remote;

use super::sockets;
use super::tcp_segment;
use super::{FileTable, Kind, OpenCx, Seen};
use crate::task::Scratch;
use crate::{io_err, proc, EngineError, Result, StepExt};

/// TCP and UDP sockets.
pub struct Inet;

const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;
const TCP_NO_QUEUE: i32 = 0;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPOPT_MSS: u32 = 2;
const TCPOPT_WINDOW: u32 = 3;
const TCPOPT_SACK_PERM: u32 = 4;
const TCPOPT_TIMESTAMP: u32 = 8;
const TCPI_OPT_TIMESTAMPS: u32 = 1;
const TCPI_OPT_SACK: u32 = 2;
const TCPI_OPT_WSCALE: u32 = 4;
const TCPI_OPT_SYN_DATA: u32 = 32;
/// Most bytes saved from one TCP queue.
const MAX_QUEUE: usize = 64 << 20;

/// Options every inet socket keeps (set before bind at restore).
const COMMON_OPTS: &[(i32, i32)] = &[
    (libc::SOL_SOCKET, libc::SO_REUSEADDR),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
    (libc::SOL_SOCKET, libc::SO_BROADCAST),
    (libc::SOL_SOCKET, libc::SO_LINGER),
    (libc::SOL_SOCKET, libc::SO_RCVLOWAT),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE),
    (libc::SOL_SOCKET, libc::SO_PRIORITY),
    (libc::SOL_SOCKET, libc::SO_MARK),
    // Receive and send timeouts (struct timeval).
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO),
    // The interface name, or empty (which unbinds, harmlessly).
    (libc::SOL_SOCKET, libc::SO_BINDTODEVICE),
    // The program's CPU preference (-1: none), which a SO_REUSEPORT
    // group's choice follows once a member has one; the kernel's own
    // value for an established connection.
    (libc::SOL_SOCKET, SO_INCOMING_CPU),
];
const TCP_OPTS: &[(i32, i32)] = &[
    (libc::IPPROTO_TCP, libc::TCP_NODELAY),
    (libc::IPPROTO_TCP, libc::TCP_CORK),
    (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE),
    (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL),
    (libc::IPPROTO_TCP, libc::TCP_KEEPCNT),
    (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT),
    (libc::IPPROTO_TCP, libc::TCP_NOTSENT_LOWAT),
    // The congestion control algorithm's name (16 bytes at most).
    (libc::IPPROTO_TCP, libc::TCP_CONGESTION),
];
const V4_OPTS: &[(i32, i32)] = &[
    (libc::IPPROTO_IP, libc::IP_TOS),
    (libc::IPPROTO_IP, libc::IP_FREEBIND),
    (libc::IPPROTO_IP, libc::IP_TRANSPARENT),
    (libc::IPPROTO_IP, libc::IP_TTL),
];
/// Multicast and ancillary-data options exist for datagram sockets only
/// (stream sockets refuse the multicast ones with EINVAL).
const V4_UDP_OPTS: &[(i32, i32)] = &[
    (libc::IPPROTO_IP, libc::IP_MULTICAST_TTL),
    (libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP),
    (libc::IPPROTO_IP, libc::IP_RECVERR),
    (libc::IPPROTO_IP, libc::IP_PKTINFO),
    (libc::IPPROTO_IP, libc::IP_RECVTTL),
    (libc::IPPROTO_IP, libc::IP_RECVTOS),
    (libc::IPPROTO_IP, libc::IP_MTU_DISCOVER),
];
const V6_OPTS: &[(i32, i32)] = &[
    (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
    (libc::IPPROTO_IPV6, libc::IPV6_TCLASS),
    (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
    (libc::IPPROTO_IPV6, IPV6_FREEBIND),
    (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT),
];
const V6_UDP_OPTS: &[(i32, i32)] = &[
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS),
    (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVERR),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO),
    (libc::IPPROTO_IPV6, libc::IPV6_RECVHOPLIMIT),
    (libc::IPPROTO_IPV6, libc::IPV6_MTU_DISCOVER),
];
/// `SO_INCOMING_CPU` (libc lacks it).
const SO_INCOMING_CPU: i32 = 49;
/// `IPV6_FREEBIND` (libc lacks it).
const IPV6_FREEBIND: i32 = 78;
/// `SOL_RAW`, `ICMP_FILTER` (raw ICMP sockets) and `ICMPV6_FILTER`.
const SOL_RAW: i32 = 255;
const ICMP_FILTER: i32 = 1;
const ICMPV6_FILTER: i32 = 1;
/// `IPV6_CHECKSUM` (at SOL_RAW: ICMPv6 sockets refuse it at IPPROTO_IPV6).
const IPV6_CHECKSUM: i32 = 7;
/// UDP-Lite checksum coverage (`UDPLITE_SEND_CSCOV`, `UDPLITE_RECV_CSCOV`).
const UDPLITE_SEND_CSCOV: i32 = 10;
const UDPLITE_RECV_CSCOV: i32 = 11;

/// The inet protocols the engine keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Proto {
    Tcp,
    Udp,
    UdpLite,
    /// An ICMP ("ping") datagram socket.
    Ping,
    /// SOCK_RAW of any protocol.
    Raw,
}

impl Proto {
    fn of(domain: i32, ty: i32, proto: i32) -> Option<Proto> {
        let icmp = if domain == libc::AF_INET6 { libc::IPPROTO_ICMPV6 } else { libc::IPPROTO_ICMP };
        match (ty, proto) {
            (libc::SOCK_STREAM, libc::IPPROTO_TCP) => Some(Proto::Tcp),
            (libc::SOCK_DGRAM, libc::IPPROTO_UDP) => Some(Proto::Udp),
            (libc::SOCK_DGRAM, libc::IPPROTO_UDPLITE) => Some(Proto::UdpLite),
            (libc::SOCK_DGRAM, p) if p == icmp => Some(Proto::Ping),
            (libc::SOCK_RAW, _) => Some(Proto::Raw),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::UdpLite => "UDP-Lite",
            Proto::Ping => "ICMP",
            Proto::Raw => "raw",
        }
    }

    /// The options of a socket of this protocol (beyond [`COMMON_OPTS`]
    /// and the family's).
    fn opts(self, domain: i32, proto: i32) -> Vec<(i32, i32)> {
        let v6 = domain == libc::AF_INET6;
        let mut out = Vec::new();
        match self {
            Proto::Tcp => out.extend_from_slice(TCP_OPTS),
            _ => out.extend_from_slice(if v6 { V6_UDP_OPTS } else { V4_UDP_OPTS }),
        }
        match self {
            Proto::UdpLite => {
                out.extend_from_slice(&[(libc::IPPROTO_UDPLITE, UDPLITE_SEND_CSCOV), (libc::IPPROTO_UDPLITE, UDPLITE_RECV_CSCOV)])
            }
            Proto::Raw if !v6 => {
                out.push((libc::IPPROTO_IP, libc::IP_HDRINCL));
                if proto == libc::IPPROTO_ICMP {
                    out.push((SOL_RAW, ICMP_FILTER));
                }
            }
            Proto::Raw => {
                if proto == libc::IPPROTO_ICMPV6 {
                    out.push((libc::IPPROTO_ICMPV6, ICMPV6_FILTER));
                } else {
                    out.push((SOL_RAW, IPV6_CHECKSUM));
                }
            }
            _ => {}
        }
        out
    }
}

/// Whether an option value read back must not be set again: UDP-Lite's
/// checksum coverage of 0 reads the same whether never set or set to 0,
/// and setting it (which marks it set) would make the receive side drop
/// datagrams of partial coverage that the socket took before.
fn skip_opt(o: &SockOpt) -> bool {
    o.level == libc::IPPROTO_UDPLITE && o.value.iter().all(|&b| b == 0)
}

fn state_name(st: u8) -> &'static str {
    match st {
        1 => "ESTABLISHED",
        7 => "CLOSE",
        10 => "LISTEN",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        11 => "CLOSING",
        _ => "unknown",
    }
}

/// Parses a raw sockaddr_in or sockaddr_in6.
fn parse_addr(b: &[u8]) -> Option<InetAddr> {
    let fam = u16::from_ne_bytes(b.get(..2)?.try_into().ok()?) as i32;
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as u32;
    match fam {
        libc::AF_INET => Some(InetAddr { ip: b.get(4..8)?.to_vec(), port, scope_id: 0 }),
        libc::AF_INET6 => {
            Some(InetAddr { ip: b.get(8..24)?.to_vec(), port, scope_id: u32::from_ne_bytes(b.get(24..28)?.try_into().ok()?) })
        }
        _ => None,
    }
}

/// Builds a raw sockaddr for `a` in `family`.
fn sockaddr(family: i32, a: &InetAddr) -> Vec<u8> {
    let mut b = (family as u16).to_ne_bytes().to_vec();
    b.extend_from_slice(&(a.port as u16).to_be_bytes());
    if family == libc::AF_INET {
        b.extend_from_slice(&a.ip);
        b.resize(16, 0);
    } else {
        b.extend_from_slice(&[0; 4]);
        b.extend_from_slice(&a.ip);
        b.extend_from_slice(&a.scope_id.to_ne_bytes());
    }
    b
}

pub(crate) fn show(a: &InetAddr) -> String {
    match a.ip.len() {
        4 => format!("{}.{}.{}.{}:{}", a.ip[0], a.ip[1], a.ip[2], a.ip[3], a.port),
        16 => {
            let ip: [u8; 16] = a.ip.clone().try_into().unwrap_or([0; 16]);
            format!("[{}]:{}", std::net::Ipv6Addr::from(ip), a.port)
        }
        _ => format!("?:{}", a.port),
    }
}

/// An address as 16 bytes (IPv4 as v4-mapped IPv6) with its port.
fn key(a: &InetAddr) -> ([u8; 16], u32) {
    let mut ip = [0u8; 16];
    if a.ip.len() == 4 {
        ip[10] = 0xff;
        ip[11] = 0xff;
        ip[12..].copy_from_slice(&a.ip);
    } else if a.ip.len() == 16 {
        ip.copy_from_slice(&a.ip);
    }
    (ip, a.port)
}

/// Parses "0100007F:1F90" (IPv4) or 32 hex digits and a port (IPv6) of
/// /proc/net/tcp{,6}.
fn parse_proc_addr(s: &str) -> Option<([u8; 16], u32)> {
    let (ip, port) = s.split_once(':')?;
    let port = u32::from_str_radix(port, 16).ok()?;
    let mut bytes = Vec::new();
    for i in (0..ip.len()).step_by(8) {
        bytes.extend_from_slice(&u32::from_str_radix(ip.get(i..i + 8)?, 16).ok()?.to_ne_bytes());
    }
    Some(key(&InetAddr { ip: bytes, port, scope_id: 0 }))
}

/// An address as [`key`] makes it: 16 bytes (IPv4 as v4-mapped) and port.
type Key = ([u8; 16], u32);

/// The TCP sockets of a network namespace, as one look saw them.
#[derive(Default)]
pub(crate) struct TcpSockets {
    /// Inode by (local, peer) address.
    by_addrs: std::collections::HashMap<(Key, Key), u64>,
    /// The local address of each connection in the handshake (SYN_RECV:
    /// a request socket, which no descriptor holds).
    opening: Vec<Key>,
}

impl TcpSockets {
    fn add(&mut self, state: u8, l: Key, p: Key, ino: u64) {
        // A closed connection's row (TIME_WAIT) has no inode: a live
        // socket at the same addresses is the one.
        let slot = self.by_addrs.entry((l, p)).or_insert(ino);
        if *slot == 0 {
            *slot = ino;
        }
        if state == 3 {
            self.opening.push(l);
        }
    }

    /// Both families through inet_diag, in the namespace of `pid`.
    fn diag(pid: i32) -> Result<TcpSockets> {
        let path = format!("/proc/{pid}/ns/net");
        let ns = std::fs::File::open(&path).map_err(crate::io_err(format!("open {path}")))?;
        let (v4, v6) = net::in_netns(std::os::fd::AsFd::as_fd(&ns), || {
            Ok::<_, lpm_sys::Error>((net::tcp_diag(libc::AF_INET)?, net::tcp_diag(libc::AF_INET6)?))
        })
        .and_then(|r| r)
        .step(pid, || "sock_diag tcp sockets".into())?;
        let mut all = TcpSockets::default();
        for d in v4.into_iter().chain(v6) {
            let k = |ip: &[u8], port: u16| key(&InetAddr { ip: ip.to_vec(), port: port as u32, scope_id: 0 });
            all.add(d.state, k(&d.src, d.sport), k(&d.dst, d.dport), d.ino);
        }
        Ok(all)
    }

    /// Both families from /proc/PID/net/tcp{,6}, where inet_diag cannot
    /// answer (a kernel without tcp_diag).
    fn proc(pid: i32) -> TcpSockets {
        let mut all = TcpSockets::default();
        for file in ["net/tcp", "net/tcp6"] {
            let text = crate::proc::read(pid, file).unwrap_or_default();
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 10 {
                    continue;
                }
                if let (Some(l), Some(p), Ok(st), Ok(ino)) =
                    (parse_proc_addr(f[1]), parse_proc_addr(f[2]), u8::from_str_radix(f[3], 16), f[9].parse::<u64>())
                {
                    all.add(st, l, p, ino);
                }
            }
        }
        all
    }
}

/// The TCP sockets of the network namespace of `pid`, looked at once per
/// namespace and dump or inspection (`table.tcp_sockets`): each look
/// walks the kernel's whole established hash table (4.5 ms for a read of
/// /proc/net/tcp here, 1 ms for an inet_diag dump), and was taken for
/// each connection and each listener a server holds (16 clients made 140
/// ms of a migration's stop; redis's two listeners 36 ms).
fn tcp_sockets(table: &FileTable, pid: i32) -> Result<std::rc::Rc<TcpSockets>> {
    let ns = std::os::unix::fs::MetadataExt::ino(
        &std::fs::metadata(format!("/proc/{pid}/ns/net")).map_err(crate::io_err(format!("stat /proc/{pid}/ns/net")))?,
    );
    if let Some(s) = table.tcp_sockets.borrow().get(&ns) {
        return Ok(s.clone());
    }
    let all = match TcpSockets::diag(pid) {
        Ok(all) => all,
        Err(e) => {
            tracing::debug!(pid, error = %e, "no inet_diag: TCP sockets read from /proc");
            TcpSockets::proc(pid)
        }
    };
    let all = std::rc::Rc::new(all);
    table.tcp_sockets.borrow_mut().insert(ns, all.clone());
    Ok(all)
}

/// The inode of the TCP socket with local address `local` and peer `peer`
/// in the network namespace of `pid`, if any.
fn tcp_inode(table: &FileTable, pid: i32, local: &InetAddr, peer: &InetAddr) -> Result<Option<u64>> {
    Ok(tcp_sockets(table, pid)?.by_addrs.get(&(key(local), key(peer))).copied())
}

/// The peer address of the TCP socket with inode `ino`, from
/// /proc/PID/net/tcp{,6}, in the socket's family.
fn proc_peer(pid: i32, ino: u64, v6: bool) -> Option<InetAddr> {
    let text = crate::proc::read(pid, if v6 { "net/tcp6" } else { "net/tcp" }).ok()?;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[9].parse::<u64>().ok() != Some(ino) {
            continue;
        }
        let (ip, port) = parse_proc_addr(f[2])?;
        return Some(if v6 {
            InetAddr { ip: ip.to_vec(), port, scope_id: 0 }
        } else {
            InetAddr { ip: ip[12..].to_vec(), port, scope_id: 0 }
        });
    }
    None
}

/// How many connections to the listener at `local` are in the handshake
/// (request sockets in SYN_RECV, which no descriptor holds).
fn handshakes(table: &FileTable, pid: i32, local: &InetAddr) -> Result<usize> {
    let (lip, lport) = key(local);
    let any = local.ip.iter().all(|&b| b == 0);
    Ok(tcp_sockets(table, pid)?.opening.iter().filter(|&&(ip, port)| port == lport && (any || ip == lip)).count())
}

/// Whether a TCP socket in state CLOSE had a connection that ended
/// (its receive side shut, or an error pending): poll(2) on a copy
/// tells without taking anything.
fn closed_after_connection(s: BorrowedFd) -> bool {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(&s, PollFlags::IN | PollFlags::RDHUP)];
    let zero = rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 };
    match poll(&mut fds, Some(&zero)) {
        Ok(_) => fds[0].revents().intersects(PollFlags::RDHUP | PollFlags::ERR),
        Err(_) => false,
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4).map(|x| u32::from_ne_bytes(x.try_into().unwrap_or_default())).unwrap_or(0)
}

/// Peeks `len` bytes of the queue selected in repair mode.
fn peek(seen: &Seen, s: BorrowedFd, len: usize, what: &str) -> Result<Vec<u8>> {
    if len > MAX_QUEUE {
        return Err(seen.unsupported(format!("TCP connection with {len} bytes in its {what} queue")));
    }
    let mut buf = vec![0u8; len];
    let mut got = 0;
    if len > 0 {
        got = match net::recv(s, &mut buf, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Ok(r) => r.len,
            // Emptied since it was measured: the caller reads again.
            Err(e) if e.errno() == Some(libc::EAGAIN) => 0,
            Err(e) => return Err(e).step(seen.pid, || format!("peek the {what} queue of fd {}", seen.fd)),
        };
    }
    // Short when the queue shrank since it was measured: the caller reads
    // again.
    buf.truncate(got);
    Ok(buf)
}

/// Waits a moment before a queue is read again; after 50 reads that did
/// not agree (50 ms) the connection is refused, naming the queue.
fn settle(seen: &Seen, tries: &mut u32, what: &str, got: usize, len: usize) -> Result<()> {
    *tries += 1;
    if *tries >= 50 {
        return Err(seen.unsupported(format!("TCP {what} queue kept changing while read: read {got} of {len} bytes")));
    }
    std::thread::sleep(std::time::Duration::from_millis(1));
    Ok(())
}

/// The connection states the engine rebuilds, from TCP_INFO's number.
fn conn_state(st: u8) -> Option<TcpState> {
    match st {
        TCP_ESTABLISHED => Some(TcpState::Established),
        2 => Some(TcpState::SynSent),
        4 => Some(TcpState::FinWait1),
        5 => Some(TcpState::FinWait2),
        8 => Some(TcpState::CloseWait),
        9 => Some(TcpState::LastAck),
        11 => Some(TcpState::Closing),
        _ => None,
    }
}

/// Our FIN is in the sequence space (sent, queued or acknowledged).
fn our_fin(st: TcpState) -> bool {
    matches!(st, TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing | TcpState::LastAck)
}

/// The peer's FIN was received.
fn their_fin(st: TcpState) -> bool {
    matches!(st, TcpState::CloseWait | TcpState::LastAck | TcpState::Closing)
}

/// TCP_INFO of a socket.
fn tcp_info(seen: &Seen, s: BorrowedFd) -> Result<[u8; 104]> {
    let mut info = [0u8; 104];
    net::getsockopt(s, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info).step(seen.pid, || format!("TCP_INFO fd {}", seen.fd))?;
    Ok(info)
}

/// Reads a connection in repair mode: established, half-closed, closing
/// or connecting (SYN_SENT).
///
/// The kernel counts a FIN in the sequence space and in SIOCOUTQ /
/// SIOCOUTQNSD (ours, while unacknowledged), and in rcv_nxt (the
/// peer's); the image counts data only and tells FINs by the state: our
/// FIN is unsent when anything is (it is queued last).
fn dump_tcp(seen: &Seen, s: BorrowedFd) -> Result<TcpConnImage> {
    let step = |what: &'static str| move || format!("{what} on fd {}", seen.fd);
    let set = |name: i32, val: i32, what: &'static str| net::setsockopt_int(s, libc::IPPROTO_TCP, name, val).step(seen.pid, step(what));
    let get = |name: i32, what: &'static str| net::getsockopt_int(s, libc::IPPROTO_TCP, name).step(seen.pid, step(what));
    let ioctl = |req: u64, what: &'static str| net::ioctl_int(s, req).step(seen.pid, step(what)).map(|v| v as u32);
    let reuse = sockets::opt_int(seen, s, libc::SOL_SOCKET, libc::SO_REUSEADDR, "SO_REUSEADDR")?;
    set(libc::TCP_REPAIR, 1, "TCP_REPAIR on")?;
    let res = (|| {
        // A frozen task's sockets still live: an acknowledgement arriving
        // (from a peer in the tree, over loopback, which no network lock
        // cuts) frees the head of the send queue between its sequence
        // number and the copy, data arriving grows the receive queue, a
        // FIN or an acknowledgement of ours moves the state. Everything
        // is read until two looks agree.
        let mut tries = 0;
        let (info, mut t) = loop {
            let info = tcp_info(seen, s)?;
            let st = conn_state(info[0])
                .ok_or_else(|| seen.unsupported(format!("TCP connection left for state {} while frozen", state_name(info[0]))))?;
            let mut t = TcpConnImage { state: st as i32, ..Default::default() };
            // Our FIN counts in SIOCOUTQ until acknowledged, and in
            // SIOCOUTQNSD until sent.
            let fin_pending = our_fin(st) && st != TcpState::FinWait2;
            set(libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE send")?;
            let wseq = get(libc::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ send")? as u32;
            let outq_raw = ioctl(net::SIOCOUTQ, "SIOCOUTQ")?;
            let unsent_raw = ioctl(net::SIOCOUTQNSD, "SIOCOUTQNSD")?;
            let outq = outq_raw.saturating_sub(u32::from(fin_pending)) as usize;
            t.fin_unsent = fin_pending && unsent_raw > 0;
            t.unsent = unsent_raw.saturating_sub(u32::from(t.fin_unsent));
            let sent = peek(seen, s, outq, "send")?;
            let wseq_again = get(libc::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ send")? as u32;
            set(libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE receive")?;
            let rseq = get(libc::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ receive")? as u32;
            let inq = ioctl(net::SIOCINQ, "SIOCINQ")? as usize;
            let recvd = peek(seen, s, inq, "receive")?;
            let inq_again = ioctl(net::SIOCINQ, "SIOCINQ")? as usize;
            let rseq_again = get(libc::TCP_QUEUE_SEQ, "TCP_QUEUE_SEQ receive")? as u32;
            let info_again = tcp_info(seen, s)?;
            if wseq == wseq_again
                && sent.len() == outq
                && rseq == rseq_again
                && recvd.len() == inq
                && inq_again == inq
                && info_again[0] == info[0]
            {
                t.snd_seq = wseq.wrapping_sub(u32::from(our_fin(st)));
                t.rcv_seq = rseq.wrapping_sub(u32::from(their_fin(st)));
                (t.send_queue, t.recv_queue) = (sent, recvd);
                break (info, t);
            }
            settle(seen, &mut tries, "connection", recvd.len() + sent.len(), inq + outq)?;
        };
        set(libc::TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "TCP_REPAIR_QUEUE none")?;
        if t.state == TcpState::SynSent as i32 && info[5] as u32 & TCPI_OPT_SYN_DATA != 0 {
            return Err(seen.unsupported("TCP connection opening with data in its SYN (TCP Fast Open)"));
        }
        t.mss = get(libc::TCP_MAXSEG, "TCP_MAXSEG")? as u32;
        t.timestamp = get(libc::TCP_TIMESTAMP, "TCP_TIMESTAMP")? as u32;
        let mut w = [0u8; 20];
        net::getsockopt(s, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW, &mut w).step(seen.pid, step("TCP_REPAIR_WINDOW"))?;
        (t.snd_wl1, t.snd_wnd, t.max_window, t.rcv_wnd, t.rcv_wup) =
            (u32_at(&w, 0), u32_at(&w, 4), u32_at(&w, 8), u32_at(&w, 12), u32_at(&w, 16));
        t.rcvbuf = sockets::opt_int(seen, s, libc::SOL_SOCKET, libc::SO_RCVBUF, "SO_RCVBUF")? as u32;
        t.sndbuf = sockets::opt_int(seen, s, libc::SOL_SOCKET, libc::SO_SNDBUF, "SO_SNDBUF")? as u32;
        t.options = info[5] as u32;
        t.snd_wscale = (info[6] & 0xf) as u32;
        t.rcv_wscale = (info[6] >> 4) as u32;
        Ok(t)
    })();
    // Leaving repair mode resets SO_REUSEADDR: put the task's value back.
    set(libc::TCP_REPAIR, net::TCP_REPAIR_OFF_NO_WP, "TCP_REPAIR off")?;
    net::setsockopt_int(s, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse).step(seen.pid, step("SO_REUSEADDR"))?;
    res
}

/// An inet socket as seen from outside (getsockopt, getsockname,
/// TCP_INFO and MSG_PEEK of a datagram on a copy: the socket is left as
/// it was), the rules applied: its image without the connection's repair
/// state and buffer sizes, a copy of the descriptor and its TCP_INFO.
struct Observed {
    s: OwnedFd,
    domain: i32,
    ty: i32,
    proto: i32,
    img: SocketImage,
    /// A connection whose peer no process of the tree holds.
    outside: bool,
}

/// Refuses what the restore cannot rebuild: other protocols, TCP
/// connections in the handshake or waiting to be accepted, sockets whose
/// connection ended while their program holds them, connections to peers
/// outside the tree (unless the network is locked:
/// [`FileTable::tcp_established`]) and queued datagrams.
fn observe(seen: &Seen, table: &FileTable) -> Result<Observed> {
    let s = sockets::take(seen)?;
    let fd = s.as_fd();
    let int = |level, name, what| sockets::opt_int(seen, fd, level, name, what);
    let domain = int(libc::SOL_SOCKET, libc::SO_DOMAIN, "SO_DOMAIN")?;
    let ty = int(libc::SOL_SOCKET, libc::SO_TYPE, "SO_TYPE")?;
    let proto = int(libc::SOL_SOCKET, libc::SO_PROTOCOL, "SO_PROTOCOL")?;
    let Some(kind) = Proto::of(domain, ty, proto) else {
        return Err(seen.unsupported(format!(
            "inet socket of type {ty} protocol {proto} (TCP, UDP, UDP-Lite, ICMP datagram and raw sockets are supported)"
        )));
    };
    let tcp = kind == Proto::Tcp;
    let net_ns = sockets::netns_of(seen, fd)?;
    let local = net::local_name(fd).step(seen.pid, || format!("getsockname fd {}", seen.fd))?;
    let local = parse_addr(&local).ok_or_else(|| seen.unsupported("inet socket with an unreadable local address"))?;
    let mut peer = net::peer_name(fd).ok().and_then(|b| parse_addr(&b));
    if peer.is_none() && matches!(kind, Proto::Ping | Proto::Raw) {
        // Connected with no port (ICMP has none; a raw socket's is its
        // protocol): getpeername says ENOTCONN, /proc still shows it.
        peer = dgram_peer(seen.pid, seen.st.ino(), domain == libc::AF_INET6, kind);
    }
    let mut img = SocketImage {
        ino: seen.st.ino(),
        family: domain as u32,
        sock_type: ty as u32,
        protocol: proto as u32,
        net_ns,
        state: SocketState::Unconnected as i32,
        local: Some(local.clone()),
        owner_uid: seen.st.uid(),
        owner_gid: seen.st.gid(),
        ..Default::default()
    };
    (img.filter, img.filter_locked) = sockets::filter(seen, fd)?;
    let what = |st: &str| format!("{} socket {} {st}", kind.name(), show(&local));
    let mut outside = false;
    if tcp {
        let info = tcp_info(seen, fd)?;
        match info[0] {
            TCP_LISTEN => {
                let waiting = u32_at(&info, 24);
                if waiting > 0 {
                    return Err(seen.transient(what(&format!("has {waiting} connections waiting in its accept queue"))));
                }
                // Connections in the handshake (SYN_RECV) have no socket of
                // their own: a peer that already counts its connection as
                // established would be reset by the restored listener.
                let opening = handshakes(table, seen.pid, &local)?;
                if opening > 0 {
                    return Err(seen.transient(what(&format!("has {opening} connections in the handshake (SYN_RECV)"))));
                }
                img.state = SocketState::Listening as i32;
                img.backlog = u32_at(&info, 28);
            }
            TCP_CLOSE => {
                // A socket whose connection ended (reset, or closed both
                // ways) while its program still holds it reads as end of
                // file or an error; a new socket would say "not
                // connected".
                if closed_after_connection(fd) {
                    return Err(
                        seen.transient(what("is closed after its connection ended (reset, or closed both ways), not yet by its program"))
                    );
                }
            }
            st => {
                let Some(cs) = conn_state(st) else {
                    return Err(seen.transient(what(&format!("in state {}", state_name(st)))));
                };
                // getpeername answers ENOTCONN while connecting.
                let p = match (peer, cs) {
                    (Some(p), _) => p,
                    (None, TcpState::SynSent) => proc_peer(seen.pid, seen.st.ino(), domain == libc::AF_INET6)
                        .ok_or_else(|| seen.unsupported(what("is connecting but /proc shows no peer address")))?,
                    (None, _) => return Err(seen.unsupported(what(&format!("is {} but has no peer address", state_name(st))))),
                };
                let inside = tcp_inode(table, seen.pid, &p, &local)?.and_then(|ino| sockets::holder(table, ino)).is_some();
                if !inside && !table.tcp_established {
                    return Err(seen.unsupported(what(&format!(
                        "is connected to {} outside the tree (in state {}; lpm locks the network for it with --tcp-established)",
                        show(&p),
                        state_name(st)
                    ))));
                }
                outside = !inside;
                img.state = SocketState::Connected as i32;
                img.peer = Some(p);
            }
        }
    } else {
        let mut b = [0u8; 1];
        match net::recv(fd, &mut b, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
            Err(e) if e.errno() == Some(libc::EAGAIN) => {}
            _ => return Err(seen.transient(what("has datagrams queued"))),
        }
        // An error pending (sk_err, or ICMP errors queued for IP_RECVERR)
        // would be lost: a new socket has none.
        if net::poll_now(fd).step(seen.pid, || format!("poll fd {}", seen.fd))? & libc::POLLERR != 0 {
            return Err(seen.transient(what("has an error pending (its error queue or SO_ERROR)")));
        }
        if let Some(p) = peer {
            img.state = SocketState::Connected as i32;
            img.peer = Some(p);
        }
    }
    Ok(Observed { s, domain, ty, proto, img, outside })
}

/// The place (1, 2, ...) of the socket with inode `ino` in the
/// SO_REUSEPORT group at its address (UDP and UDP-Lite sockets, TCP
/// listeners), in the order the group was formed; 0 when it is alone.
///
/// /proc/PID/net/{tcp,udp,udplite}{,6} list the sockets of a port in the
/// order of the kernel's hash chain: a member joins it at the head, but
/// an IPv6 TCP listener of a group at the tail. Reversed where needed,
/// that is the order of the group's array, which the kernel hashes a
/// flow into, as long as no member left it: a member leaving moves the
/// last one into its place there, which nothing shows.
fn reuseport_rank(pid: i32, kind: Proto, domain: i32, local: &InetAddr, ino: u64) -> u32 {
    let v6 = domain == libc::AF_INET6;
    let base = match kind {
        Proto::Tcp => "net/tcp",
        Proto::Udp => "net/udp",
        Proto::UdpLite => "net/udplite",
        _ => return 0,
    };
    let text = crate::proc::read(pid, &format!("{base}{}", if v6 { "6" } else { "" })).unwrap_or_default();
    let want = key(local);
    let mut members: Vec<u64> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let listening = f.get(3) == Some(&"0A");
            (f.len() >= 10 && parse_proc_addr(f[1]) == Some(want) && (kind != Proto::Tcp || listening)).then(|| f[9].parse().ok())?
        })
        .collect();
    if members.len() < 2 {
        return 0;
    }
    if !(kind == Proto::Tcp && v6) {
        members.reverse();
    }
    members.iter().position(|&m| m == ino).map_or(0, |i| i as u32 + 1)
}

/// The peer of a restored socket (see `files::inet_peer`).
pub(crate) fn peer_of(pid: i32, ino: u64, s: &SocketImage, sock: BorrowedFd) -> Option<InetAddr> {
    let family = s.family as i32;
    match net::peer_name(sock).ok().and_then(|b| parse_addr(&b)) {
        Some(p) => Some(p),
        None => match Proto::of(family, s.sock_type as i32, s.protocol as i32) {
            Some(kind @ (Proto::Ping | Proto::Raw)) => dgram_peer(pid, ino, family == libc::AF_INET6, kind),
            _ => None,
        },
    }
}

/// The peer of a connected ping or raw socket with inode `ino`, from
/// /proc/PID/net/{icmp,raw}{,6} (state 01: connected), in the socket's
/// family.
fn dgram_peer(pid: i32, ino: u64, v6: bool, kind: Proto) -> Option<InetAddr> {
    let base = if kind == Proto::Ping { "net/icmp" } else { "net/raw" };
    let text = crate::proc::read(pid, &format!("{base}{}", if v6 { "6" } else { "" })).ok()?;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 || f[9].parse::<u64>().ok() != Some(ino) {
            continue;
        }
        if f[3] != "01" {
            return None;
        }
        let (ip, port) = parse_proc_addr(f[2])?;
        return Some(if v6 {
            InetAddr { ip: ip.to_vec(), port, scope_id: 0 }
        } else {
            InetAddr { ip: ip[12..].to_vec(), port, scope_id: 0 }
        });
    }
    None
}

impl Kind for Inet {
    fn check(&self, seen: &Seen, _f: &FileImage, table: &FileTable) -> Result<()> {
        observe(seen, table).map(drop)
    }

    fn dump(&self, seen: &Seen, f: &mut FileImage, table: &mut FileTable) -> Result<()> {
        let Observed { s, domain, ty, proto, mut img, outside } = observe(seen, table)?;
        let fd = s.as_fd();
        let kind = Proto::of(domain, ty, proto).expect("observed");
        let tcp = kind == Proto::Tcp;
        let mut list: Vec<(i32, i32)> = COMMON_OPTS.to_vec();
        list.extend_from_slice(if domain == libc::AF_INET { V4_OPTS } else { V6_OPTS });
        list.extend(kind.opts(domain, proto));
        if kind == Proto::Raw {
            // A raw socket has its port (its protocol) from socket(2), and
            // IPV6_V6ONLY cannot be set once a socket has a port: it
            // comes back from its bind alone, as it came.
            list.retain(|&o| o != (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY));
        }
        img.opts = sockets::read_opts(fd, &list);
        img.opts.retain(|o| !skip_opt(o));
        if !tcp && img.state == SocketState::Connected as i32 {
            // The kernel moves a connected datagram socket's CPU to where
            // each packet arrives, which no read tells from a program's
            // choice; set again, it would count as a preference of its
            // SO_REUSEPORT group, whose choice would then follow CPUs.
            img.opts.retain(|o| !(o.level == libc::SOL_SOCKET && o.name == SO_INCOMING_CPU));
        }
        let tcp_state = if tcp { tcp_info(seen, fd)?[0] } else { 0 };
        img.shutdown = shutdown_bits(seen, fd, domain, kind, proto, tcp_state)?;
        let reuseport =
            img.opts.iter().any(|o| o.level == libc::SOL_SOCKET && o.name == libc::SO_REUSEPORT && o.value.iter().any(|&b| b != 0));
        if reuseport && (kind != Proto::Tcp || img.state == SocketState::Listening as i32) {
            img.reuseport_rank = reuseport_rank(seen.pid, kind, domain, img.local.as_ref().expect("observed"), seen.st.ino());
        }
        if img.state == SocketState::Connected as i32 && tcp {
            if outside {
                // No packet of it may move from here until the restore
                // has rebuilt it (the peer only retransmits meanwhile).
                if let (Some(lock), Some(p)) = (table.lock.as_mut(), img.peer.as_ref()) {
                    lock.add(seen, img.net_ns, img.local.as_ref().expect("observed"), p)?;
                }
            }
            // Repair mode only here, with the tree stopped.
            img.tcp = Some(dump_tcp(seen, fd)?);
        } else {
            img.opts.extend(sockets::buffer_opts(fd, domain, ty, proto));
        }
        f.socket = Some(img);
        Ok(())
    }

    fn open(&self, f: &FileImage, cx: &mut OpenCx) -> Result<OwnedFd> {
        let s = sockets::image(f)?;
        if s.reuseport_rank != 0 && !cx.sockets.contains_key(&s.ino) {
            group_first(s, cx)?;
        }
        let fd = match cx.sockets.remove(&s.ino) {
            Some(fd) => fd,
            None => {
                if s.tcp.is_some() {
                    listener_first(f, s, cx)?;
                }
                create(f, s, cx)?
            }
        };
        sockets::set_flags(f, &fd)?;
        Ok(fd)
    }

    fn install(&self, pid: i32, _r: &mut Remote, _s: Scratch, fd: &Fd, f: &FileImage, _p: &Process) -> Result<()> {
        // Created in the restorer; an established connection leaves repair
        // mode here, when every socket of the tree exists.
        match sockets::image(f)? {
            s @ SocketImage { tcp: Some(t), .. } => finish_tcp(pid, fd, f, s, t, false),
            _ => Ok(()),
        }
    }
}

fn restore_err(f: &FileImage, s: &SocketImage, what: String) -> impl FnOnce(lpm_sys::Error) -> EngineError {
    let local = s.local.as_ref().map(show).unwrap_or_default();
    let what = format!("socket file {} ({local}): {what}", f.id);
    move |source| EngineError::Step { pid: 0, step: what, source }
}

/// Creates, before an accepted connection, the listener on its port that
/// comes later in the image (binding the listener after the connection
/// would find the port taken).
fn listener_first(f: &FileImage, s: &SocketImage, cx: &mut OpenCx) -> Result<()> {
    let port = s.local.as_ref().map(|a| a.port).unwrap_or(0);
    let later = cx.tree.files.iter().filter(|l| l.id > f.id && l.kind == FileKind::InetSocket as i32).find(|l| {
        l.socket.as_ref().is_some_and(|ls| {
            ls.state == SocketState::Listening as i32 && ls.net_ns == s.net_ns && ls.local.as_ref().map(|a| a.port) == Some(port)
        })
    });
    if let Some(l) = later {
        let ls = sockets::image(l)?;
        if ls.reuseport_rank != 0 {
            return group_first(ls, cx);
        }
        if !cx.sockets.contains_key(&ls.ino) {
            let fd = create(l, ls, cx)?;
            cx.sockets.insert(ls.ino, fd);
        }
    }
    Ok(())
}

/// Creates every member of the SO_REUSEPORT group of `s` (the sockets of
/// the image at its address with a rank) in the order of their ranks,
/// ahead of their own files: each joins the group when bound (UDP) or
/// when listening (TCP), at the end of it.
fn group_first(s: &SocketImage, cx: &mut OpenCx) -> Result<()> {
    let same = |o: &SocketImage| {
        o.reuseport_rank != 0
            && (o.net_ns, o.family, o.sock_type, o.protocol) == (s.net_ns, s.family, s.sock_type, s.protocol)
            && o.local == s.local
    };
    let mut group: Vec<&FileImage> =
        cx.tree.files.iter().filter(|g| g.kind == FileKind::InetSocket as i32 && g.socket.as_ref().is_some_and(same)).collect();
    group.sort_by_key(|g| g.socket.as_ref().map(|gs| gs.reuseport_rank));
    for g in group {
        let gs = sockets::image(g)?;
        if !cx.sockets.contains_key(&gs.ino) {
            let fd = create(g, gs, cx)?;
            cx.sockets.insert(gs.ino, fd);
        }
    }
    Ok(())
}

fn is_bound(a: &InetAddr) -> bool {
    a.port != 0 || a.ip.iter().any(|&b| b != 0)
}

fn create(f: &FileImage, s: &SocketImage, cx: &OpenCx) -> Result<OwnedFd> {
    let family = s.family as i32;
    let kind = Proto::of(family, s.sock_type as i32, s.protocol as i32);
    let sock = if kind == Some(Proto::Ping) {
        sockets::in_ns(cx, s.net_ns, || net::ping_socket(family, s.protocol as i32, s.owner_uid, s.owner_gid))?
    } else {
        sockets::create_owned(cx, s, family, s.sock_type as i32, s.protocol as i32)?
    };
    let fd = sock.as_fd();
    if let Some(t) = &s.tcp {
        restore_tcp(f, s, fd, t)?;
        return Ok(sock);
    }
    sockets::apply_opts(f, fd, &s.opts)?;
    // A raw socket's port is its protocol, there from socket(2).
    let bound = |a: &&InetAddr| if kind == Some(Proto::Raw) { a.ip.iter().any(|&b| b != 0) } else { is_bound(a) };
    if let Some(a) = s.local.as_ref().filter(bound) {
        net::bind(fd, &sockaddr(family, a)).map_err(|e| {
            if e.errno() == Some(libc::EADDRINUSE) {
                let reuse =
                    s.opts.iter().any(|o| o.level == libc::SOL_SOCKET && o.name == libc::SO_REUSEADDR && o.value.iter().any(|&b| b != 0));
                EngineError::Incompatible(format!(
                    "socket file {}: {} is in use here{}",
                    f.id,
                    show(a),
                    if reuse {
                        ""
                    } else {
                        " (the program did not set SO_REUSEADDR; a connection of the old tree may linger in TIME_WAIT)"
                    }
                ))
            } else {
                restore_err(f, s, format!("bind {}", show(a)))(e)
            }
        })?;
    }
    if s.state == SocketState::Listening as i32 {
        net::listen(fd, s.backlog as i32).map_err(restore_err(f, s, "listen".into()))?;
    }
    if let Some(p) = s.peer.as_ref().filter(|_| s.state == SocketState::Connected as i32) {
        net::connect(fd, &sockaddr(family, p)).map_err(restore_err(f, s, format!("connect to {}", show(p))))?;
    }
    restore_shutdown(f, s, fd)?;
    sockets::apply_filter(f, fd, s)?;
    Ok(sock)
}

/// The shutdown bits of a socket (1: receive, 2: send), in whatever state
/// it is: a UDP socket keeps them whether connected or not (shutdown(2)
/// answers ENOTCONN but sets them), a TCP connection shut for reading only
/// stays established. poll shows the receive side (POLLRDHUP; POLLHUP for
/// both); the send side shows only in sock_diag, which lists the sockets
/// that are bound: of a UDP socket never bound, a send-only shutdown is
/// not seen. `tcp_state` is TCP_INFO's (for TCP).
fn shutdown_bits(seen: &Seen, s: BorrowedFd, domain: i32, kind: Proto, proto: i32, tcp_state: u8) -> Result<u32> {
    let ev = net::poll_now(s).step(seen.pid, || format!("poll fd {}", seen.fd))?;
    let polled = if ev & libc::POLLRDHUP != 0 { 1 } else { 0 };
    if matches!(kind, Proto::Ping | Proto::Raw) {
        // sock_diag lists neither: poll shows the receive side, and both
        // when both are shut.
        return Ok(if ev & libc::POLLHUP != 0 { 3 } else { polled });
    }
    if proto == libc::IPPROTO_TCP {
        return Ok(match tcp_state {
            // Shut for writing, a connection leaves the established state
            // (refused as such).
            TCP_ESTABLISHED => polled,
            // Whatever the bits, listening goes on (a read shutdown would
            // have closed it); a closed socket always polls POLLHUP.
            TCP_LISTEN => 0,
            _ => {
                let ino = seen.st.ino();
                sockets::in_task_netns(seen, || net::inet_shutdown(domain, proto, ino))?
                    .step(seen.pid, || format!("sock_diag shutdown of fd {}", seen.fd))?
                    .map_or(polled, u32::from)
            }
        });
    }
    let ino = seen.st.ino();
    let diag = sockets::in_task_netns(seen, || net::inet_shutdown(domain, proto, ino))?
        .step(seen.pid, || format!("sock_diag shutdown of fd {}", seen.fd))?;
    Ok(match diag {
        Some(bits) => bits as u32,
        // Not bound: datagram_poll says POLLHUP only when both are shut.
        None if ev & libc::POLLHUP != 0 => 3,
        None => polled,
    })
}

/// Shuts a restored socket down as it was (`SocketImage::shutdown`); an
/// unconnected socket answers ENOTCONN, having set the bits all the same.
fn restore_shutdown(f: &FileImage, s: &SocketImage, fd: BorrowedFd) -> Result<()> {
    let how = match s.shutdown & 3 {
        0 => return Ok(()),
        1 => libc::SHUT_RD,
        2 => libc::SHUT_WR,
        _ => libc::SHUT_RDWR,
    };
    match net::shutdown(fd, how) {
        Err(e) if e.errno() != Some(libc::ENOTCONN) => Err(restore_err(f, s, format!("shutdown {how}"))(e)),
        _ => Ok(()),
    }
}

fn send_all(f: &FileImage, s: &SocketImage, fd: BorrowedFd, data: &[u8], what: &str) -> Result<()> {
    let mut off = 0;
    while off < data.len() {
        off += net::send(fd, &data[off..], &[], libc::MSG_DONTWAIT).map_err(restore_err(f, s, format!("refill the {what} queue")))?;
    }
    Ok(())
}

/// Rebuilds a connection in repair mode, up to what needs every socket
/// of the tree to exist: sequence numbers, bind and connect (which send
/// nothing), negotiated options, timestamp, the queues (the sent part of
/// the send queue in repair mode; the unsent part goes when repair mode
/// is left), window. FINs come in [`finish_tcp`]. A connection still
/// opening (SYN_SENT) only gets its initial sequence number and its
/// address here; it connects when it leaves repair mode.
fn restore_tcp(f: &FileImage, s: &SocketImage, fd: BorrowedFd, t: &TcpConnImage) -> Result<()> {
    let e = |what: &str| restore_err(f, s, what.to_string());
    let set = |name: i32, val: i32, what: &str| net::setsockopt_int(fd, libc::IPPROTO_TCP, name, val).map_err(e(what));
    let family = s.family as i32;
    let (local, peer) = match (&s.local, &s.peer) {
        (Some(l), Some(p)) => (l, p),
        _ => return Err(EngineError::Incompatible(format!("socket file {}: a connection without addresses", f.id))),
    };
    let st = state(f, t)?;
    set(libc::TCP_REPAIR, 1, "TCP_REPAIR on")?;
    // Before bind: with IPV6_V6ONLY the address family choices differ,
    // and a non-local address needs IP_FREEBIND or IP_TRANSPARENT.
    for o in s.opts.iter().filter(|o| before_bind(o)) {
        net::setsockopt(fd, o.level, o.name, &o.value).map_err(e(&format!("option {} before bind", o.name)))?;
    }
    if st == TcpState::SynSent {
        // connect(2) keeps a write_seq set beforehand as the initial
        // sequence number: the SYN it sends again is the one the peer may
        // have answered already.
        set(libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE send")?;
        set(libc::TCP_QUEUE_SEQ, t.snd_seq.wrapping_sub(1) as i32, "TCP_QUEUE_SEQ send")?;
        set(libc::TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "TCP_REPAIR_QUEUE none")?;
        return net::bind(fd, &sockaddr(family, local)).map_err(e(&format!("bind {} in repair mode", show(local))));
    }
    set(libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE send")?;
    set(libc::TCP_QUEUE_SEQ, t.snd_seq.wrapping_sub(t.send_queue.len() as u32) as i32, "TCP_QUEUE_SEQ send")?;
    set(libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE receive")?;
    set(libc::TCP_QUEUE_SEQ, t.rcv_seq.wrapping_sub(t.recv_queue.len() as u32) as i32, "TCP_QUEUE_SEQ receive")?;
    net::bind(fd, &sockaddr(family, local)).map_err(e(&format!("bind {} in repair mode", show(local))))?;
    net::connect(fd, &sockaddr(family, peer)).map_err(e(&format!("connect to {} in repair mode", show(peer))))?;
    let mut opts: Vec<u8> = Vec::new();
    let mut opt = |code: u32, val: u32| {
        opts.extend_from_slice(&code.to_ne_bytes());
        opts.extend_from_slice(&val.to_ne_bytes());
    };
    opt(TCPOPT_MSS, t.mss);
    if t.options & TCPI_OPT_WSCALE != 0 {
        opt(TCPOPT_WINDOW, t.snd_wscale | (t.rcv_wscale << 16));
    }
    if t.options & TCPI_OPT_TIMESTAMPS != 0 {
        opt(TCPOPT_TIMESTAMP, 0);
    }
    if t.options & TCPI_OPT_SACK != 0 {
        opt(TCPOPT_SACK_PERM, 0);
    }
    net::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_OPTIONS, &opts).map_err(e("TCP_REPAIR_OPTIONS"))?;
    set(libc::TCP_TIMESTAMP, t.timestamp as i32, "TCP_TIMESTAMP")?;
    // The buffers as they were: the window a receiver advertises follows
    // its free room, and a larger buffer would take data the original
    // kept waiting. Images before they were recorded: big enough for the
    // queues (the peer filled them over time with autotuned buffers; a
    // fresh socket's may be too small to take them back at once).
    for (name, force, len, was) in [
        (libc::SO_SNDBUF, libc::SO_SNDBUFFORCE, t.send_queue.len(), t.sndbuf),
        (libc::SO_RCVBUF, libc::SO_RCVBUFFORCE, t.recv_queue.len(), t.rcvbuf),
    ] {
        let have = net::getsockopt_int(fd, libc::SOL_SOCKET, name).map_err(e("read buffer size"))?;
        let need = (len * 2 + (64 << 10)) as i32;
        if was > 0 && name == libc::SO_SNDBUF && len > 0 && (was as i32) / 2 < need {
            // The queue as the original held it may not fit the original
            // buffer again (the kernel charges each segment its whole
            // allocation, which the refill's segments need not share with
            // the original's): room while it is queued, and the buffer as
            // it was once the queue is in (`finish_tcp`).
            net::setsockopt_int(fd, libc::SOL_SOCKET, force, need).map_err(e("grow send buffer for the queue"))?;
            continue;
        }
        if was > 0 {
            if have != was as i32 {
                // The kernel doubles what it is given.
                net::setsockopt_int(fd, libc::SOL_SOCKET, force, (was / 2) as i32).map_err(e("set buffer size"))?;
            }
            continue;
        }
        if len > 0 && have / 2 < need {
            net::setsockopt_int(fd, libc::SOL_SOCKET, force, need).map_err(e("grow buffer for the queue"))?;
        }
    }
    set(libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE, "TCP_REPAIR_QUEUE receive")?;
    send_all(f, s, fd, &t.recv_queue, "receive")?;
    // What was sent stays sent, also toward a peer outside the tree:
    // that peer may have received (and acknowledged, into the lock) more
    // than the image saw acknowledged, and a socket whose next sequence
    // number is behind the peer's acknowledgement discards it with the
    // segment that carries it, data and window included. Sent again as
    // new data, the queue would stall as soon as the first flight ends
    // short of what the peer holds (see `probes`).
    let sent = t.send_queue.len().saturating_sub(t.unsent as usize);
    set(libc::TCP_REPAIR_QUEUE, TCP_SEND_QUEUE, "TCP_REPAIR_QUEUE send")?;
    send_all(f, s, fd, &t.send_queue[..sent], "send")?;
    set(libc::TCP_REPAIR_QUEUE, TCP_NO_QUEUE, "TCP_REPAIR_QUEUE none")?;
    // The peer's FIN is not in rcv_nxt yet: a window last moved after it
    // is moved back by one.
    let (mut rcv_wup, mut rcv_wnd) = (t.rcv_wup, t.rcv_wnd);
    if (rcv_wup.wrapping_sub(t.rcv_seq) as i32) > 0 {
        rcv_wnd += rcv_wup.wrapping_sub(t.rcv_seq);
        rcv_wup = t.rcv_seq;
    }
    set_window(f, s, fd, t, rcv_wup, rcv_wnd)?;
    // The queues are in: what arrives from now on meets the filter.
    sockets::apply_filter(f, fd, s)?;
    // Repair mode is left in `finish_tcp`, once every socket of the tree
    // exists: a window probe, data or an answer to a FIN sent now could
    // reach a peer end not yet created, and the reset it draws would kill
    // the connection.
    Ok(())
}

/// The options a connection in repair mode needs before its bind.
fn before_bind(o: &SockOpt) -> bool {
    matches!(
        (o.level, o.name),
        (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)
            | (libc::IPPROTO_IP, libc::IP_FREEBIND)
            | (libc::IPPROTO_IP, libc::IP_TRANSPARENT)
            | (libc::IPPROTO_IPV6, IPV6_FREEBIND)
            | (libc::IPPROTO_IPV6, libc::IPV6_TRANSPARENT)
    )
}

/// The connection's recorded state, or an error for one this build does
/// not know.
fn state(f: &FileImage, t: &TcpConnImage) -> Result<TcpState> {
    t.tcp_state().ok_or_else(|| EngineError::Incompatible(format!("socket file {}: unknown TCP state {}", f.id, t.state)))
}

fn set_window(f: &FileImage, s: &SocketImage, fd: BorrowedFd, t: &TcpConnImage, rcv_wup: u32, rcv_wnd: u32) -> Result<()> {
    let mut w = Vec::new();
    for v in [t.snd_wl1, t.snd_wnd, t.max_window, rcv_wnd, rcv_wup] {
        w.extend_from_slice(&v.to_ne_bytes());
    }
    net::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW, &w).map_err(restore_err(
        f,
        s,
        format!(
            "TCP_REPAIR_WINDOW snd_wl1={:#x} snd_wnd={} max={} rcv_wnd={rcv_wnd} rcv_wup={rcv_wup:#x}",
            t.snd_wl1, t.snd_wnd, t.max_window
        ),
    ))
}

/// How a connection's FINs come back. Ours is queued as sent by
/// shutdown(2) in repair mode (with the send queue selected, it is not
/// transmitted), unless it must follow data sent when repair mode is left
/// (it was never sent): then shutdown(2)
/// queues it after that data, as a program's would. The peer's FIN and
/// its acknowledgement of ours are segments made up by the restore
/// (`tcp_segment`).
struct Fins {
    /// Ours, queued as sent in repair mode.
    ours_now: bool,
    /// Ours, queued by shutdown(2) after leaving repair mode.
    ours_later: bool,
    /// Ours acknowledged by the peer (FIN_WAIT2).
    acked: bool,
    /// The peer's, received.
    theirs: bool,
}

fn fins(st: TcpState, t: &TcpConnImage) -> Fins {
    let ours = our_fin(st);
    let acked = st == TcpState::FinWait2;
    let later = ours && !acked && t.fin_unsent;
    Fins { ours_now: ours && !later, ours_later: later, acked, theirs: their_fin(st) }
}

/// Polls the socket's TCP state until it is one of `want` (the segment
/// just sent to it is taken in softirq context, a moment later).
fn wait_state(f: &FileImage, s: &SocketImage, fd: BorrowedFd, want: &[u8], after: &str) -> Result<()> {
    let t0 = std::time::Instant::now();
    loop {
        let mut info = [0u8; 104];
        net::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info).map_err(restore_err(f, s, "TCP_INFO".into()))?;
        if want.contains(&info[0]) {
            return Ok(());
        }
        if t0.elapsed() > std::time::Duration::from_secs(2) {
            let want: Vec<&str> = want.iter().map(|&w| state_name(w)).collect();
            return Err(EngineError::Incompatible(format!(
                "socket file {} ({}): {after} the connection is in state {}, not {}",
                f.id,
                s.local.as_ref().map(show).unwrap_or_default(),
                state_name(info[0]),
                want.join(" or ")
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Sends the socket a segment from its peer: `flags` at the peer's next
/// sequence number, acknowledging `ack`.
fn from_peer(f: &FileImage, s: &SocketImage, fd: BorrowedFd, t: &TcpConnImage, flags: u8, ack: u32) -> Result<()> {
    let (Some(local), Some(peer)) = (&s.local, &s.peer) else {
        return Err(EngineError::Incompatible(format!("socket file {}: a connection without addresses", f.id)));
    };
    let shift = if t.options & TCPI_OPT_WSCALE != 0 { t.snd_wscale.min(14) } else { 0 };
    let window = (t.snd_wnd >> shift).min(0xffff) as u16;
    let seg = tcp_segment::Segment { from: peer, to: local, seq: t.rcv_seq, ack, flags, window };
    tcp_segment::inject(fd, &seg).map_err(restore_err(f, s, "send a segment from the peer".into()))
}

/// shutdown(SHUT_WR): our FIN, queued as sent when `in_repair`.
fn shut(f: &FileImage, s: &SocketImage, fd: BorrowedFd, in_repair: bool) -> Result<()> {
    let set = |v: i32| {
        net::setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, v).map_err(restore_err(f, s, "TCP_REPAIR_QUEUE".into()))
    };
    if in_repair {
        set(TCP_SEND_QUEUE)?;
    }
    net::shutdown(fd, libc::SHUT_WR).map_err(restore_err(f, s, "shutdown (our FIN)".into()))?;
    if in_repair {
        set(TCP_NO_QUEUE)?;
    }
    Ok(())
}

/// The FINs of a restored connection that come in repair mode (see
/// [`Fins`]), once every socket of the tree exists and before any of them
/// leaves repair mode: an answer to a made-up segment then reaches a peer
/// end in repair mode (inside the tree) or none (the lock drops it), and
/// no peer end has sent anything yet that would move this one on.
pub(crate) fn settle_fins(f: &FileImage, fd: BorrowedFd) -> Result<()> {
    let s = sockets::image(f)?;
    let Some(t) = &s.tcp else { return Ok(()) };
    let st = state(f, t)?;
    if st == TcpState::SynSent || st == TcpState::Established {
        return Ok(());
    }
    let plan = fins(st, t);
    let una = t.snd_seq.wrapping_sub(t.send_queue.len() as u32);
    if plan.ours_now && st != TcpState::LastAck {
        shut(f, s, fd, true)?;
    }
    if plan.acked {
        from_peer(f, s, fd, t, tcp_segment::ACK, t.snd_seq.wrapping_add(1))?;
        wait_state(f, s, fd, &[5], "after the peer's acknowledgement of our FIN")?;
    }
    let their_now = plan.theirs && !(st == TcpState::Closing && plan.ours_later);
    if their_now {
        from_peer(f, s, fd, t, tcp_segment::FIN | tcp_segment::ACK, una)?;
        // CLOSE_WAIT, or CLOSING when our FIN went first.
        wait_state(f, s, fd, &[8, 11], "after the peer's FIN")?;
    }
    if plan.ours_now && st == TcpState::LastAck {
        shut(f, s, fd, true)?;
    }
    if their_now || plan.acked {
        // The segments moved the window; put it as it was.
        set_window(f, s, fd, t, t.rcv_wup, t.rcv_wnd)?;
    }
    Ok(())
}

/// Leaves repair mode on a restored connection (once, from the first
/// puppet holding it), its FINs in repair mode settled
/// ([`settle_fins`]): repair off (with a window probe when `probe`),
/// options (repair mode resets SO_REUSEADDR on leaving), then the
/// never-sent part of the send queue, which goes out as a program's write
/// would, and our FIN after it when it follows that data (the peer's FIN,
/// in CLOSING, after ours). A connection still opening connects here: its
/// SYN goes out.
fn finish_tcp(pid: i32, fd: &Fd, f: &FileImage, s: &SocketImage, t: &TcpConnImage, probe: bool) -> Result<()> {
    let sock = net::steal_fd(pid, fd.fd as i32).step(pid, || format!("pidfd_getfd restored fd {}", fd.fd))?;
    let sfd = sock.as_fd();
    let e = |what: &str| restore_err(f, s, what.to_string());
    if net::getsockopt_int(sfd, libc::IPPROTO_TCP, libc::TCP_REPAIR).map_err(e("read TCP_REPAIR"))? == 0 {
        return Ok(());
    }
    let later: Vec<SockOpt> = s.opts.iter().filter(|o| !(o.level == libc::IPPROTO_IPV6 && o.name == libc::IPV6_V6ONLY)).cloned().collect();
    let st = state(f, t)?;
    if st == TcpState::SynSent {
        net::setsockopt_int(sfd, libc::IPPROTO_TCP, libc::TCP_REPAIR, net::TCP_REPAIR_OFF_NO_WP).map_err(e("TCP_REPAIR off"))?;
        sockets::apply_opts(f, sfd, &later)?;
        return connect_again(f, s, sfd);
    }
    let plan = fins(st, t);
    let una = t.snd_seq.wrapping_sub(t.send_queue.len() as u32);
    // The timers the connection takes out of repair mode (a slow resume
    // of its stream shows here first).
    if let Ok(info) = tcp_info_of(sfd) {
        let u = |o: usize| u32::from_ne_bytes([info[o], info[o + 1], info[o + 2], info[o + 3]]);
        tracing::debug!(pid, fd = fd.fd, retransmits = info[2], backoff = info[4], rto_us = u(8), unacked = u(24), "leave repair mode");
    }
    let off = if probe { net::TCP_REPAIR_OFF } else { net::TCP_REPAIR_OFF_NO_WP };
    net::setsockopt_int(sfd, libc::IPPROTO_TCP, libc::TCP_REPAIR, off).map_err(e("TCP_REPAIR off"))?;
    sockets::apply_opts(f, sfd, &later)?;
    let sent = t.send_queue.len().saturating_sub(t.unsent as usize);
    if !send_unsent(f, s, sfd, &t.send_queue[sent..])? {
        tracing::debug!(pid, fd = fd.fd, "the peer reset the connection as it left repair mode: it ends, as it would have");
        return Ok(());
    }
    // The whole queue is in: the send buffer as it was (grown for the
    // refill in `restore_tcp`); a program's write now waits for room as
    // it would have.
    if t.sndbuf > 0 && net::getsockopt_int(sfd, libc::SOL_SOCKET, libc::SO_SNDBUF).map_err(e("read buffer size"))? != t.sndbuf as i32 {
        net::setsockopt_int(sfd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, (t.sndbuf / 2) as i32).map_err(e("set buffer size"))?;
    }
    if plan.ours_later {
        shut(f, s, sfd, false)?;
        if st == TcpState::Closing && plan.theirs {
            // The peer's FIN crossed ours: it comes once ours is queued.
            net::setsockopt_int(sfd, libc::IPPROTO_TCP, libc::TCP_REPAIR, 1).map_err(e("TCP_REPAIR on"))?;
            from_peer(f, s, sfd, t, tcp_segment::FIN | tcp_segment::ACK, una)?;
            wait_state(f, s, sfd, &[11], "after the peer's FIN")?;
            set_window(f, s, sfd, t, t.rcv_wup, t.rcv_wnd)?;
            net::setsockopt_int(sfd, libc::IPPROTO_TCP, libc::TCP_REPAIR, net::TCP_REPAIR_OFF_NO_WP).map_err(e("TCP_REPAIR off"))?;
            sockets::apply_opts(f, sfd, &later)?;
        }
    }
    // A read shutdown of the program's own (the write side is the FINs').
    restore_shutdown(f, s, sfd)
}

/// Queues the never-sent part of the send queue on a connection out of
/// repair mode; false when the peer has reset the connection meanwhile.
/// A peer that lost its end while the partition was stopped (its
/// retransmission met no socket without a network lock) answers the
/// restored connection's first segment with a reset: the connection ends
/// then, as it would have, and that is the program's to read. The reset's
/// error stays on the socket for the program when it came before the
/// send; one that comes during the send is taken by it, and the program
/// reads the end of the stream instead.
fn send_unsent(f: &FileImage, s: &SocketImage, fd: BorrowedFd, data: &[u8]) -> Result<bool> {
    const TCP_CLOSE: u8 = 7;
    if tcp_info_of(fd).map_err(restore_err(f, s, "TCP_INFO".into()))?[0] == TCP_CLOSE {
        return Ok(false);
    }
    let mut off = 0;
    while off < data.len() {
        match net::send(fd, &data[off..], &[], libc::MSG_DONTWAIT) {
            Ok(n) => off += n,
            Err(e) if matches!(e.errno(), Some(libc::ECONNRESET | libc::EPIPE)) => return Ok(false),
            Err(e) => return Err(restore_err(f, s, "refill the send queue".into())(e)),
        }
    }
    Ok(true)
}

/// TCP_INFO of a restored socket.
fn tcp_info_of(fd: BorrowedFd) -> lpm_sys::Result<[u8; 104]> {
    let mut info = [0u8; 104];
    net::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut info)?;
    Ok(info)
}

/// connect(2) of a connection that was opening, without waiting for the
/// answer (the program's own connect(2), restarted, waits if it did).
fn connect_again(f: &FileImage, s: &SocketImage, fd: BorrowedFd) -> Result<()> {
    use rustix::fs::{fcntl_getfl, fcntl_setfl, OFlags};
    let peer = s.peer.as_ref().ok_or_else(|| EngineError::Incompatible(format!("socket file {}: connecting without a peer", f.id)))?;
    let e = |what: &str| restore_err(f, s, what.to_string());
    let fl = fcntl_getfl(fd).map_err(|err| e("F_GETFL")(lpm_sys::Error::sys("fcntl", 0, err.into())))?;
    fcntl_setfl(fd, fl | OFlags::NONBLOCK).map_err(|err| e("F_SETFL")(lpm_sys::Error::sys("fcntl", 0, err.into())))?;
    let res = net::connect(fd, &sockaddr(s.family as i32, peer));
    fcntl_setfl(fd, fl).map_err(|err| e("F_SETFL")(lpm_sys::Error::sys("fcntl", 0, err.into())))?;
    match res {
        Ok(()) => Ok(()),
        Err(err) if err.errno() == Some(libc::EINPROGRESS) => Ok(()),
        Err(err) => Err(e(&format!("connect to {} again", show(peer)))(err)),
    }
}

/// Leaves repair mode on a connection deferred at install.
pub(crate) fn finish_deferred(d: &super::Deferred) -> Result<()> {
    let s = sockets::image(&d.file)?;
    let t = s.tcp.as_ref().ok_or_else(|| EngineError::Incompatible(format!("socket file {}: deferred but not a connection", d.file.id)))?;
    finish_tcp(d.pid, &d.fd, &d.file, s, t, d.probe)
}

/// Whether a deferred connection sends a window probe as it leaves repair
/// mode: only toward a peer outside the tree, once the network is
/// unlocked. The probe (a segment below the peer's window) makes the peer
/// answer at once with its acknowledgement and window: the restored end
/// learns what the peer got while the lock dropped the acknowledgements,
/// and whether its window opened meanwhile, without waiting for the
/// peer's next segment, which its retransmission or zero-window-probe
/// backoff, grown with the length of the lock, may hold back for as long
/// as the lock lasted. Both ends of a connection inside the tree are
/// restored consistent (`reconcile`) and need none.
pub(crate) fn probes(files: &[FileImage], f: &FileImage, defer: bool) -> bool {
    let conn = |f: &FileImage| f.socket.as_ref().filter(|s| s.tcp.is_some()).map(|s| (s.net_ns, s.local.clone(), s.peer.clone()));
    let Some((ns, local, peer)) = conn(f) else { return false };
    defer && !files.iter().any(|b| b.id != f.id && conn(b).is_some_and(|(bns, bl, bp)| bns == ns && bl == peer && bp == local))
}

/// Puts every TCP connection of a dumped tree (about to be killed) back in
/// repair mode, through a copy of the first descriptor holding it, and
/// returns the copies, to drop once the tree is dead. The dump left repair
/// mode so that a tree that goes on (or a failed checkpoint) keeps its
/// connections; a killed one must not close them as a program would: a
/// socket with nothing left unread sends its FIN after its queue and
/// lingers as an orphan in FIN_WAIT1, retransmitting into the lock and
/// holding the connection's addresses, so that the restore's connect(2)
/// finds them taken (EADDRNOTAVAIL); one with unread data sends a reset.
/// A socket closed in repair mode goes without a word. Best effort: a
/// connection that cannot be put back in repair mode is closed as the
/// kernel closes it, which the lock keeps from the peer.
pub(crate) fn silence(tree: &lpm_image::TreeImage) -> Vec<OwnedFd> {
    let mut held = Vec::new();
    for f in tree.files.iter().filter(|f| f.socket.as_ref().is_some_and(|s| s.tcp.is_some())) {
        let holder = tree.processes.iter().find_map(|p| p.fds.iter().find(|d| d.file_id == f.id).map(|d| (p, d.fd)));
        let Some((p, fd)) = holder else { continue };
        let pid = if p.host_pid != 0 { p.host_pid } else { p.pid } as i32;
        let res = net::steal_fd(pid, fd as i32)
            .and_then(|sock| net::setsockopt_int(sock.as_fd(), libc::IPPROTO_TCP, libc::TCP_REPAIR, 1).map(|()| sock));
        match res {
            Ok(sock) => held.push(sock),
            Err(e) => tracing::warn!(pid, fd, error = %e, "TCP connection not put back in repair mode before the kill: it closes as usual"),
        }
    }
    held
}

/// Whether sequence number `x` lies in `[lo, hi]`, modulo 2^32.
fn seq_within(lo: u32, x: u32, hi: u32) -> bool {
    x.wrapping_sub(lo) as i32 >= 0 && hi.wrapping_sub(x) as i32 >= 0
}

/// Whether the receiving end `b` of the stream sent by `a` agrees with it:
/// `b` has received at least what `a` saw acknowledged and no more than
/// `a` has sent; `b` has `a`'s FIN only if `a` sent it, after all of its
/// data; `a`'s FIN is acknowledged only if `b` has it.
fn agree(a: &TcpConnImage, b: &TcpConnImage) -> bool {
    let (sa, sb) = (a.tcp_state().unwrap_or(TcpState::Established), b.tcp_state().unwrap_or(TcpState::Established));
    let una = a.snd_seq.wrapping_sub(a.send_queue.len() as u32);
    let nxt = a.snd_seq.wrapping_sub(a.unsent);
    if !seq_within(una, b.rcv_seq, nxt) {
        return false;
    }
    if their_fin(sb) && (!our_fin(sa) || a.fin_unsent || b.rcv_seq != a.snd_seq) {
        return false;
    }
    sa != TcpState::FinWait2 || their_fin(sb)
}

/// Both ends of every connection held inside the tree, as indexes into
/// the table's files.
fn inner_pairs(files: &[FileImage]) -> Vec<(usize, usize)> {
    let conn = |f: &FileImage| f.socket.as_ref().filter(|s| s.tcp.is_some()).map(|s| (s.net_ns, s.local.clone(), s.peer.clone()));
    let mut out = Vec::new();
    for (i, a) in files.iter().enumerate() {
        let Some((ns, local, peer)) = conn(a) else { continue };
        for (j, b) in files.iter().enumerate().skip(i + 1) {
            if conn(b).is_some_and(|(bns, bl, bp)| bns == ns && bl == peer && bp == local) {
                out.push((i, j));
            }
        }
    }
    out
}

/// Reads the connection of table entry `i` again, from its holder.
fn reread(table: &mut FileTable, i: usize) -> Result<()> {
    let (pid, fd, _, _) = table.owners[i];
    let link = proc::link(pid, &format!("fd/{fd}"))?;
    let st = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).map_err(io_err(format!("stat fd {fd} of pid {pid}")))?;
    let seen = Seen { pid, fd, ns_pid: pid, link: &link, st: &st };
    let s = sockets::take(&seen)?;
    let t = dump_tcp(&seen, s.as_fd())?;
    if let Some(sock) = table.files[i].socket.as_mut() {
        sock.tcp = Some(t);
    }
    Ok(())
}

/// Makes the two ends of every connection inside the tree agree.
///
/// A frozen task's sockets still live in the kernel: a retransmission,
/// delayed-ACK or window-probe timer may move data or acknowledgments
/// between the moments its two ends are read. An end read before such an
/// exchange and its peer read after it describe a stream that never was:
/// restored, the receiver acknowledges data its sender believes it never
/// sent, the sender ignores that acknowledgment as invalid and the stream
/// stalls for good (or the sender freed data the receiver never got). Both
/// ends are read again, back to back, until they agree. Data still in
/// flight (sent, not yet received) is then marked unsent on the sender, so
/// the restored sender transmits it at once instead of after a
/// retransmission timeout; so is a FIN in flight, and a FIN behind data
/// marked unsent.
pub(crate) fn reconcile(table: &mut FileTable) -> Result<()> {
    const ATTEMPTS: usize = 50;
    let pairs = inner_pairs(&table.files);
    for attempt in 0.. {
        let tcp = |i: usize| table.files[i].socket.as_ref().and_then(|s| s.tcp.as_ref()).expect("paired ends are connections");
        let bad: Vec<(usize, usize)> = pairs.iter().copied().filter(|&(a, b)| !agree(tcp(a), tcp(b)) || !agree(tcp(b), tcp(a))).collect();
        if bad.is_empty() {
            break;
        }
        if attempt == ATTEMPTS {
            let (a, _) = bad[0];
            let (pid, fd, _, _) = table.owners[a];
            return Err(EngineError::Unsupported {
                pid,
                kind: "file descriptor",
                what: format!("fd {fd}: TCP connection inside the tree kept changing while frozen ({ATTEMPTS} reads of both ends)"),
            });
        }
        for (a, b) in bad {
            reread(table, a)?;
            reread(table, b)?;
        }
    }
    for (a, b) in pairs {
        for (snd, rcv) in [(a, b), (b, a)] {
            let (rcv_seq, got_fin) = table.files[rcv]
                .socket
                .as_ref()
                .and_then(|s| s.tcp.as_ref())
                .map(|t| (t.rcv_seq, t.tcp_state().is_some_and(their_fin)))
                .expect("connection");
            if let Some(t) = table.files[snd].socket.as_mut().and_then(|s| s.tcp.as_mut()) {
                let nxt = t.snd_seq.wrapping_sub(t.unsent);
                t.unsent += nxt.wrapping_sub(rcv_seq);
                let st = t.tcp_state().unwrap_or(TcpState::Established);
                if our_fin(st) && st != TcpState::FinWait2 && (!got_fin || t.unsent > 0) {
                    t.fin_unsent = true;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod reconcile_tests {
    use super::*;

    fn conn(snd_seq: u32, queued: usize, unsent: u32, rcv_seq: u32) -> TcpConnImage {
        TcpConnImage { snd_seq, send_queue: vec![0; queued], unsent, rcv_seq, ..Default::default() }
    }

    #[test]
    fn ends_agree_only_within_sent_and_acknowledged() {
        // a: acknowledged up to 1000, sent up to 1400, written up to 1500.
        let a = conn(1500, 500, 100, 0);
        for (rcv, ok) in [(999, false), (1000, true), (1200, true), (1400, true), (1401, false)] {
            assert_eq!(agree(&a, &conn(0, 0, 0, rcv)), ok, "receiver at {rcv}");
        }
        // Across the wrap of the sequence space.
        let w = conn(100, 300, 0, 0);
        assert!(agree(&w, &conn(0, 0, 0, u32::MAX - 50)));
        assert!(!agree(&w, &conn(0, 0, 0, 101)));
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn ino(fd: &impl AsRawFd) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap().ino()
    }

    fn addr(a: std::net::SocketAddr) -> Key {
        let ip = match a.ip() {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        key(&InetAddr { ip, port: a.port() as u32, scope_id: 0 })
    }

    /// inet_diag and /proc/net/tcp{,6} show the same sockets at the same
    /// addresses, listeners and both ends of a connection, in both
    /// families: the dump's look-ups cannot tell which one answered.
    #[test]
    fn inet_diag_agrees_with_proc() {
        let pid = std::process::id() as i32;
        for host in ["127.0.0.1:0", "[::1]:0"] {
            let l = TcpListener::bind(host).unwrap();
            let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (a, _) = l.accept().unwrap();
            let any: Key = if host.starts_with('[') { ([0; 16], 0) } else { key(&InetAddr { ip: vec![0; 4], port: 0, scope_id: 0 }) };
            let rows = [
                ((addr(l.local_addr().unwrap()), any), ino(&l)),
                ((addr(c.local_addr().unwrap()), addr(c.peer_addr().unwrap())), ino(&c)),
                ((addr(a.local_addr().unwrap()), addr(a.peer_addr().unwrap())), ino(&a)),
            ];
            let diag = TcpSockets::diag(pid).unwrap();
            let proc = TcpSockets::proc(pid);
            for (k, want) in rows {
                assert_eq!(diag.by_addrs.get(&k), Some(&want), "inet_diag, {host}: {k:?}");
                assert_eq!(proc.by_addrs.get(&k), Some(&want), "/proc, {host}: {k:?}");
            }
        }
    }
}
