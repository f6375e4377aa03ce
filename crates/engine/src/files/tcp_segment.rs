//! Segments from a connection's peer, made up by the restore: the part of
//! a half-closed or closing connection that TCP_REPAIR cannot set.
//!
//! Repair mode rebuilds sequence numbers, queues, options and windows,
//! and a FIN of our own (shutdown(2) in repair mode queues it as sent),
//! but nothing makes a socket believe the peer's FIN arrived, or that the
//! peer acknowledged ours. The restore sends the socket those segments
//! itself, as CRIU does: a FIN from the peer (CLOSE_WAIT, LAST_ACK,
//! CLOSING), an acknowledgement of our FIN (FIN_WAIT2). They go from a
//! raw socket made inside the socket's network namespace to one of that
//! namespace's own addresses, so they never leave the machine; they
//! carry [`MARK`], which the network lock lets through. The socket
//! answers as TCP does (an acknowledgement to the peer's address): the
//! lock drops what would reach a peer outside the tree, and a peer inside
//! it exists by then, in repair mode, and takes it as the duplicate it is.

use std::os::fd::{AsFd, BorrowedFd};

use lpm_image::InetAddr;
use lpm_sys::net;

/// The packet mark of the restore's own segments (and of nothing else
/// lpm sends): the network lock's rules let it through. "LPM1".
pub const MARK: u32 = 0x4c50_4d31;

/// TCP flags.
pub const FIN: u8 = 0x01;
/// TCP flags.
pub const ACK: u8 = 0x10;

/// A segment from `from` to `to`, without data or options.
pub struct Segment<'a> {
    /// The peer's address (the segment's source).
    pub from: &'a InetAddr,
    /// The socket's own address (the destination).
    pub to: &'a InetAddr,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// FIN, ACK.
    pub flags: u8,
    /// The window the peer advertises (already scaled down).
    pub window: u16,
}

/// The IPv4 address inside `a` (plain, or IPv4-mapped IPv6), if any.
fn v4(a: &InetAddr) -> Option<[u8; 4]> {
    match a.ip.len() {
        4 => a.ip.clone().try_into().ok(),
        16 if a.ip[..10].iter().all(|&b| b == 0) && a.ip[10] == 0xff && a.ip[11] == 0xff => a.ip[12..].try_into().ok(),
        _ => None,
    }
}

/// The Internet checksum of `parts`, concatenated.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for p in parts {
        for &b in p.iter() {
            match odd.take() {
                Some(hi) => sum += u32::from(u16::from_be_bytes([hi, b])),
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u32::from(u16::from_be_bytes([hi, 0]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The TCP header of `s`, its checksum computed over `pseudo`.
fn tcp_header(s: &Segment, pseudo: &[u8]) -> Vec<u8> {
    let mut h = Vec::with_capacity(20);
    h.extend_from_slice(&(s.from.port as u16).to_be_bytes());
    h.extend_from_slice(&(s.to.port as u16).to_be_bytes());
    h.extend_from_slice(&s.seq.to_be_bytes());
    h.extend_from_slice(&s.ack.to_be_bytes());
    h.push(5 << 4);
    h.push(s.flags);
    h.extend_from_slice(&s.window.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]);
    let c = checksum(&[pseudo, &h]);
    h[16..18].copy_from_slice(&c.to_be_bytes());
    h
}

/// The whole packet (IP header included) and the raw socket's family
/// and destination address for it.
fn packet(s: &Segment) -> Option<(i32, Vec<u8>, Vec<u8>)> {
    if let (Some(src), Some(dst)) = (v4(s.from), v4(s.to)) {
        let mut pseudo = Vec::with_capacity(12);
        pseudo.extend_from_slice(&src);
        pseudo.extend_from_slice(&dst);
        pseudo.extend_from_slice(&[0, libc::IPPROTO_TCP as u8, 0, 20]);
        let tcp = tcp_header(s, &pseudo);
        // Version 4, 20 bytes of header; total length; id 0 and the
        // header checksum are filled by the kernel (IP_HDRINCL).
        let mut p = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, libc::IPPROTO_TCP as u8, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(&tcp);
        let mut to = (libc::AF_INET as u16).to_ne_bytes().to_vec();
        to.extend_from_slice(&[0, 0]);
        to.extend_from_slice(&dst);
        to.resize(16, 0);
        return Some((libc::AF_INET, p, to));
    }
    if s.from.ip.len() != 16 || s.to.ip.len() != 16 {
        return None;
    }
    let mut pseudo = Vec::with_capacity(40);
    pseudo.extend_from_slice(&s.from.ip);
    pseudo.extend_from_slice(&s.to.ip);
    pseudo.extend_from_slice(&[0, 0, 0, 20, 0, 0, 0, libc::IPPROTO_TCP as u8]);
    let tcp = tcp_header(s, &pseudo);
    let mut p = vec![0x60, 0, 0, 0, 0, 20, libc::IPPROTO_TCP as u8, 64];
    p.extend_from_slice(&s.from.ip);
    p.extend_from_slice(&s.to.ip);
    p.extend_from_slice(&tcp);
    let mut to = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
    to.extend_from_slice(&[0; 6]);
    to.extend_from_slice(&s.to.ip);
    to.extend_from_slice(&s.to.scope_id.to_ne_bytes());
    Some((libc::AF_INET6, p, to))
}

/// Sends `s` to the socket `sock` from a raw socket inside its network
/// namespace, marked [`MARK`].
pub fn inject(sock: BorrowedFd, s: &Segment) -> lpm_sys::Result<()> {
    let (family, pkt, to) = packet(s).ok_or_else(|| {
        lpm_sys::Error::sys("make a segment", 0, std::io::Error::other("addresses of different families or unknown lengths"))
    })?;
    let ns = net::socket_netns(sock)?;
    net::in_netns(ns.as_fd(), || {
        let raw = net::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW)?;
        net::setsockopt_int(raw.as_fd(), libc::SOL_SOCKET, libc::SO_MARK, MARK as i32)?;
        net::send(raw.as_fd(), &pkt, &to, 0).map(drop)
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_a_known_header() {
        // RFC 1071's example: 0x0001 0xf203 0xf4f5 0xf6f7 sums to 0xddf2.
        assert_eq!(checksum(&[&[0x00, 0x01, 0xf2], &[0x03, 0xf4, 0xf5, 0xf6, 0xf7]]), !0xddf2);
    }

    #[test]
    fn v4_mapped_addresses_make_ipv4_packets() {
        let mapped = InetAddr { ip: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1], port: 80, scope_id: 0 };
        let plain = InetAddr { ip: vec![127, 0, 0, 1], port: 9, scope_id: 0 };
        let s = Segment { from: &mapped, to: &plain, seq: 1, ack: 2, flags: FIN | ACK, window: 100 };
        let (family, p, _) = packet(&s).expect("packet");
        assert_eq!(family, libc::AF_INET);
        assert_eq!(p.len(), 40);
        // The TCP checksum verifies: summing the pseudo header and the
        // segment with its checksum gives 0.
        let mut pseudo = vec![127, 0, 0, 1, 127, 0, 0, 1, 0, 6, 0, 20];
        pseudo.extend_from_slice(&p[20..]);
        assert_eq!(checksum(&[&pseudo]), 0);
    }
}
