//! The mover protocol: how two lpm hosts exchange a partition's state.
//!
//! A connection is a stream of frames. Every frame starts with a fixed
//! 24-byte header that can be read without decoding the payload:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `LPMW` |
//! | 4 | 2 | frame type ([`FrameType`], 0 is invalid) |
//! | 6 | 2 | flags (bit 0: payload is zstd-compressed) |
//! | 8 | 4 | payload length as sent |
//! | 12 | 4 | payload length once decompressed |
//! | 16 | 8 | XXH3-64 of header bytes 0..16 and the payload as sent |
//!
//! The first frames of every connection are the handshake ([`handshake`]):
//! both sides announce the protocol versions they speak and prove, without
//! sending it, that they hold the cluster's pre-shared key (each MACs the
//! other's random challenge with keyed BLAKE3). A peer that fails is told
//! nothing but "authentication failed" and the connection is closed: a
//! receiver that restores whatever it is sent would otherwise run arbitrary
//! code as root. docs/wire-protocol.md is the specification.

#![forbid(unsafe_code)]

use std::io::{Read, Write};

use prost::Message;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;
/// The oldest version this build still speaks.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// Size of the frame header.
pub const HEADER_LEN: usize = 24;
/// Largest payload accepted (as sent or decompressed) once the handshake
/// has proven the peer holds the key.
pub const MAX_PAYLOAD: u32 = 64 << 20;
/// Largest payload accepted before the handshake completes: a Hello, a
/// HelloReply, an Auth or a refusal is well under 1 KiB, and a peer
/// that has not proven the key must not make the receiver hold more.
pub const HANDSHAKE_MAX_PAYLOAD: u32 = 4096;
/// Most bytes of a peer's error text that are kept (logged, stored,
/// shown); the rest is cut, its length said.
pub const MAX_PEER_TEXT: usize = 512;
const MAGIC: [u8; 4] = *b"LPMW";
const FLAG_ZSTD: u16 = 1;

/// Errors of the wire layer; each names what was being done.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed.
    #[error("{op}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The peer does not speak this protocol.
    #[error("peer is not an lpm mover (bad frame magic)")]
    BadMagic,
    /// A frame's payload does not match its checksum.
    #[error("corrupted {kind:?} frame (checksum mismatch)")]
    Checksum {
        /// The frame's type.
        kind: FrameType,
    },
    /// A frame of an unknown type (or type 0).
    #[error("frame of unknown type {0}")]
    UnknownType(u16),
    /// A frame larger than allowed.
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// The length announced (or given).
        len: u32,
        /// The limit in force.
        limit: u32,
    },
    /// A compressed payload that does not decompress to its stated size.
    #[error("{kind:?} frame does not decompress")]
    Decompress {
        /// The frame's type.
        kind: FrameType,
    },
    /// A payload that does not decode.
    #[error("{kind:?} frame does not decode")]
    Decode {
        /// The frame's type.
        kind: FrameType,
        /// The cause.
        #[source]
        source: prost::DecodeError,
    },
    /// No protocol version in common.
    #[error("no common protocol version: we speak {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}, the peer {min}..={max}")]
    Version {
        /// Peer's oldest.
        min: u32,
        /// Peer's newest.
        max: u32,
    },
    /// The peer does not hold the key (or we do not hold its).
    #[error("authentication failed: {0}")]
    Auth(&'static str),
    /// A frame arrived where another was expected.
    #[error("protocol error: expected {expected}, got {got:?}")]
    Unexpected {
        /// What was expected.
        expected: &'static str,
        /// What came.
        got: FrameType,
    },
    /// The peer reported an error and gave up.
    #[error("peer failed: {0}")]
    Peer(String),
    /// The peer is not who it says it is (inside a mutually
    /// authenticated channel: its certificate is for another name).
    #[error("identity refused: {0}")]
    Identity(String),
}

/// Result alias for this crate.
pub type Result<T, E = WireError> = std::result::Result<T, E>;

/// What a frame carries. 0 is never sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum FrameType {
    /// Opening of the handshake: versions and a challenge.
    Hello = 1,
    /// The reply: chosen version, a challenge, and the answer to ours.
    HelloReply = 2,
    /// The last step: the answer to the replier's challenge.
    Auth = 3,
    /// The peer gives up, with a reason.
    Error = 4,
    /// A control message (protobuf, defined by the migration layer).
    Control = 10,
    /// Page data: a [`PagesHeader`] then the pages.
    Pages = 20,
    /// Any other state (an image file), as bytes.
    Blob = 21,
}

impl FrameType {
    fn from_u16(v: u16) -> Result<FrameType> {
        Ok(match v {
            1 => FrameType::Hello,
            2 => FrameType::HelloReply,
            3 => FrameType::Auth,
            4 => FrameType::Error,
            10 => FrameType::Control,
            20 => FrameType::Pages,
            21 => FrameType::Blob,
            other => return Err(WireError::UnknownType(other)),
        })
    }
}

/// A received frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Its type.
    pub kind: FrameType,
    /// Its payload, decompressed.
    pub payload: Vec<u8>,
}

/// Writes one frame; `compress` asks for zstd when it makes the payload
/// smaller.
pub fn write_frame<W: Write>(w: &mut W, kind: FrameType, payload: &[u8], compress: Option<i32>) -> Result<u64> {
    write_frame_parts(w, kind, &[payload], compress)
}

/// Writes one frame whose payload is `parts` one after the other, without
/// gathering them first: a page frame is a small header and megabytes of
/// pages read straight from a process, which are written as they are.
pub fn write_frame_parts<W: Write>(w: &mut W, kind: FrameType, parts: &[&[u8]], compress: Option<i32>) -> Result<u64> {
    let io = |op| move |source| WireError::Io { op, source };
    let raw_len: usize = parts.iter().map(|p| p.len()).sum();
    if raw_len as u64 > MAX_PAYLOAD as u64 {
        return Err(WireError::TooLarge { len: raw_len.min(u32::MAX as usize) as u32, limit: MAX_PAYLOAD });
    }
    let packed = match compress {
        Some(level) if raw_len >= 512 => {
            let whole = parts.concat();
            zstd::bulk::compress(&whole, level).ok().filter(|c| c.len() < raw_len)
        }
        _ => None,
    };
    let packed_parts;
    let (body, flags): (&[&[u8]], u16) = match &packed {
        Some(c) => {
            packed_parts = [c.as_slice()];
            (&packed_parts, FLAG_ZSTD)
        }
        None => (parts, 0),
    };
    let body_len: usize = body.iter().map(|p| p.len()).sum();
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC);
    h[4..6].copy_from_slice(&(kind as u16).to_le_bytes());
    h[6..8].copy_from_slice(&flags.to_le_bytes());
    h[8..12].copy_from_slice(&(body_len as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(raw_len as u32).to_le_bytes());
    let sum = frame_sum(h[..16].try_into().expect("16 bytes"), body);
    h[16..24].copy_from_slice(&sum.to_le_bytes());
    // Header and payload in one vectored write: a buffered writer passes
    // a frame larger than its buffer straight to the socket, in one
    // syscall, rather than the header on its own (a segment of 24 bytes
    // with Nagle off) and then the payload.
    let mut slices: Vec<std::io::IoSlice<'_>> = std::iter::once(&h[..]).chain(body.iter().copied()).map(std::io::IoSlice::new).collect();
    write_all_vectored(w, &mut slices).map_err(io("send frame"))?;
    Ok((HEADER_LEN + body_len) as u64)
}

/// `Write::write_all_vectored`, which is not stable yet.
fn write_all_vectored<W: Write>(w: &mut W, mut bufs: &mut [std::io::IoSlice<'_>]) -> std::io::Result<()> {
    std::io::IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match w.write_vectored(bufs) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => std::io::IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads frames into buffers kept from one frame to the next: a mover
/// receives thousands of frames of megabytes, and a fresh buffer for each
/// would be zeroed and faulted in every time.
#[derive(Debug, Default)]
pub struct FrameReader {
    body: Vec<u8>,
    unpacked: Vec<u8>,
}

impl FrameReader {
    /// A reader with no buffer yet.
    pub fn new() -> FrameReader {
        FrameReader::default()
    }

    /// Reads one frame, verifying magic, type, size and checksum, as
    /// [`read_frame`]; the payload lives until the next call.
    pub fn read<R: Read>(&mut self, r: &mut R) -> Result<(FrameType, &[u8])> {
        let io = |op| move |source| WireError::Io { op, source };
        let mut h = [0u8; HEADER_LEN];
        r.read_exact(&mut h).map_err(io("receive frame header"))?;
        let (kind, flags, len, raw_len, sum, head) = decode_header(&h, MAX_PAYLOAD)?;
        let len = len as usize;
        // Grown, never shrunk: only new room is zeroed.
        if self.body.len() < len {
            self.body.resize(len, 0);
        }
        let body = &mut self.body[..len];
        r.read_exact(body).map_err(io("receive frame payload"))?;
        if frame_sum(&head, &[body]) != sum {
            return Err(WireError::Checksum { kind });
        }
        if flags & FLAG_ZSTD == 0 {
            return Ok((kind, &self.body[..len]));
        }
        self.unpacked = zstd::bulk::decompress(body, raw_len as usize).map_err(|_| WireError::Decompress { kind })?;
        if self.unpacked.len() != raw_len as usize {
            return Err(WireError::Decompress { kind });
        }
        Ok((kind, &self.unpacked))
    }
}

/// Reads one frame, verifying magic, type, size (at most [`MAX_PAYLOAD`])
/// and checksum.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Frame> {
    read_frame_max(r, MAX_PAYLOAD)
}

/// Reads one frame of at most `max` bytes (as sent and decompressed). The
/// payload's buffer grows with the bytes that arrive, not with the length
/// announced: a peer that announces 64 MiB and sends slowly holds only
/// what it sent.
pub fn read_frame_max<R: Read>(r: &mut R, max: u32) -> Result<Frame> {
    let io = |op| move |source| WireError::Io { op, source };
    let mut h = [0u8; HEADER_LEN];
    r.read_exact(&mut h).map_err(io("receive frame header"))?;
    let (kind, flags, len, raw_len, sum, head) = decode_header(&h, max)?;
    let mut body = Vec::with_capacity((len as usize).min(64 << 10));
    (&mut *r).take(len as u64).read_to_end(&mut body).map_err(io("receive frame payload"))?;
    if body.len() != len as usize {
        return Err(WireError::Io { op: "receive frame payload", source: std::io::ErrorKind::UnexpectedEof.into() });
    }
    finish(kind, flags, body, raw_len, sum, &head)
}

/// A peer's error text as it may be logged or stored: at most
/// [`MAX_PEER_TEXT`] bytes (cut at a character boundary, the full length
/// said), control characters escaped so that it cannot forge log lines or
/// drive a terminal.
pub fn peer_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_PEER_TEXT)]);
    let mut out = String::with_capacity(text.len() + 32);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if bytes.len() > MAX_PEER_TEXT {
        out.push_str(&format!("... ({} bytes in all)", bytes.len()));
    }
    out
}

type Header = (FrameType, u16, u32, u32, u64, [u8; 16]);

/// The checksum covers the header's first 16 bytes too, so a flipped type
/// or length is caught like a flipped payload byte.
fn frame_sum(head: &[u8; 16], body: &[&[u8]]) -> u64 {
    use std::hash::Hasher;
    let mut h = twox_hash::XxHash3_64::with_seed(0);
    h.write(head);
    for part in body {
        h.write(part);
    }
    h.finish()
}

fn decode_header(h: &[u8; HEADER_LEN], max: u32) -> Result<Header> {
    if h[..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    let u16_at = |i: usize| u16::from_le_bytes([h[i], h[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
    let kind = FrameType::from_u16(u16_at(4))?;
    let (len, raw_len) = (u32_at(8), u32_at(12));
    for l in [len, raw_len] {
        if l > max {
            return Err(WireError::TooLarge { len: l, limit: max });
        }
    }
    let head: [u8; 16] = h[..16].try_into().expect("16 bytes");
    Ok((kind, u16_at(6), len, raw_len, u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")), head))
}

fn finish(kind: FrameType, flags: u16, body: Vec<u8>, raw_len: u32, sum: u64, head: &[u8; 16]) -> Result<Frame> {
    if frame_sum(head, &[&body]) != sum {
        return Err(WireError::Checksum { kind });
    }
    let payload = if flags & FLAG_ZSTD != 0 {
        let out = zstd::bulk::decompress(&body, raw_len as usize).map_err(|_| WireError::Decompress { kind })?;
        if out.len() != raw_len as usize {
            return Err(WireError::Decompress { kind });
        }
        out
    } else {
        body
    };
    Ok(Frame { kind, payload })
}

/// Decodes a frame held whole in memory (for tests and fuzzing).
pub fn decode_frame(bytes: &[u8]) -> Result<Frame> {
    let h: &[u8; HEADER_LEN] = bytes
        .get(..HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(WireError::Io { op: "receive frame header", source: std::io::ErrorKind::UnexpectedEof.into() })?;
    let (kind, flags, len, raw_len, sum, head) = decode_header(h, MAX_PAYLOAD)?;
    let body = bytes
        .get(HEADER_LEN..HEADER_LEN + len as usize)
        .ok_or(WireError::Io { op: "receive frame payload", source: std::io::ErrorKind::UnexpectedEof.into() })?;
    finish(kind, flags, body.to_vec(), raw_len, sum, &head)
}

/// Header of a [`FrameType::Pages`] payload: `count` pages from `vaddr`
/// follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagesHeader {
    /// Which address space (the process's pid in the image).
    pub pid: u32,
    /// Number of pages that follow.
    pub count: u32,
    /// Address of the first page.
    pub vaddr: u64,
}

impl PagesHeader {
    /// Encoded size.
    pub const LEN: usize = 16;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..4].copy_from_slice(&self.pid.to_le_bytes());
        b[4..8].copy_from_slice(&self.count.to_le_bytes());
        b[8..].copy_from_slice(&self.vaddr.to_le_bytes());
        b
    }

    /// Splits a Pages payload into its header and page data, checking the
    /// data holds exactly `count` pages.
    pub fn decode(payload: &[u8]) -> Option<(PagesHeader, &[u8])> {
        let h = payload.get(..Self::LEN)?;
        let ph = PagesHeader {
            pid: u32::from_le_bytes(h[..4].try_into().ok()?),
            count: u32::from_le_bytes(h[4..8].try_into().ok()?),
            vaddr: u64::from_le_bytes(h[8..].try_into().ok()?),
        };
        let data = &payload[Self::LEN..];
        (data.len() as u64 == ph.count as u64 * 4096).then_some((ph, data))
    }
}

/// First handshake message.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// Newest protocol version of the sender.
    #[prost(uint32, tag = "1")]
    pub max_version: u32,
    /// Oldest protocol version of the sender.
    #[prost(uint32, tag = "2")]
    pub min_version: u32,
    /// The sender's challenge.
    #[prost(bytes = "vec", tag = "3")]
    pub nonce: Vec<u8>,
    /// Who the sender is (host name), for logs and errors.
    #[prost(string, tag = "4")]
    pub name: String,
}

/// Reply to [`Hello`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// The version both will speak.
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// The replier's challenge.
    #[prost(bytes = "vec", tag = "2")]
    pub nonce: Vec<u8>,
    /// MAC proving the replier holds the key.
    #[prost(bytes = "vec", tag = "3")]
    pub mac: Vec<u8>,
    /// Who the replier is.
    #[prost(string, tag = "4")]
    pub name: String,
}

/// Last handshake message: the opener's proof.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Auth {
    /// MAC proving the opener holds the key.
    #[prost(bytes = "vec", tag = "1")]
    pub mac: Vec<u8>,
}

/// The cluster's pre-shared key.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl Key {
    /// A key from 32 bytes.
    pub fn new(bytes: [u8; 32]) -> Key {
        Key(bytes)
    }

    /// A key derived from a passphrase or a key file's contents.
    pub fn derive(material: &[u8]) -> Key {
        Key(blake3::derive_key("lpm mover pre-shared key v1", material))
    }

    /// A fresh random key.
    pub fn generate() -> Result<Key> {
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| WireError::Io { op: "read random key", source: std::io::Error::other(e.to_string()) })?;
        Ok(Key(k))
    }

    fn mac(&self, role: &[u8], theirs: &[u8], mine: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        for part in [role, theirs, mine] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        *h.finalize().as_bytes()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Which end of a connection we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We opened the connection (and send Hello).
    Opener,
    /// We accepted it.
    Acceptor,
}

/// What a completed handshake agreed on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The protocol version in use.
    pub version: u32,
    /// The peer's name.
    pub peer: String,
}

fn nonce() -> Result<Vec<u8>> {
    let mut n = vec![0u8; 32];
    getrandom::fill(&mut n).map_err(|e| WireError::Io { op: "read random challenge", source: std::io::Error::other(e.to_string()) })?;
    Ok(n)
}

fn expect<M: Message + Default, S: Read + Write>(s: &mut S, want: FrameType, name: &'static str) -> Result<M> {
    let f = read_frame_max(s, HANDSHAKE_MAX_PAYLOAD)?;
    if f.kind == FrameType::Error {
        return Err(WireError::Peer(peer_text(&f.payload)));
    }
    if f.kind != want {
        return Err(WireError::Unexpected { expected: name, got: f.kind });
    }
    M::decode(f.payload.as_slice()).map_err(|source| WireError::Decode { kind: want, source })
}

fn equal(a: &[u8], b: &[u8]) -> bool {
    // Constant time: the comparison must not tell a forger how much of a
    // guessed MAC was right.
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The protocol version to speak with a peer that speaks `min..=max`:
/// the newest this build speaks that the peer does too. The acceptor
/// picks with it from the opener's Hello; the opener checks the
/// acceptor's choice with it, as a range of one. Both handshakes
/// ([`handshake`], [`hello`]) agree through this one function.
pub fn agree_version(min: u32, max: u32) -> Result<u32> {
    let version = PROTOCOL_VERSION.min(max);
    if version < MIN_PROTOCOL_VERSION.max(min) {
        return Err(WireError::Version { min, max });
    }
    Ok(version)
}

/// Runs the handshake on a fresh connection: protocol version agreed and
/// both sides proven to hold `key`. On failure the peer is told why in a
/// word and nothing else happens on the connection.
pub fn handshake<S: Read + Write>(s: &mut S, role: Role, key: &Key, name: &str) -> Result<Session> {
    let refuse = |s: &mut S, why: &str| {
        let _ = write_frame(s, FrameType::Error, why.as_bytes(), None);
    };
    match role {
        Role::Opener => {
            let mine = nonce()?;
            let hello = Hello { max_version: PROTOCOL_VERSION, min_version: MIN_PROTOCOL_VERSION, nonce: mine.clone(), name: name.into() };
            write_frame(s, FrameType::Hello, &hello.encode_to_vec(), None)?;
            let reply: HelloReply = expect(s, FrameType::HelloReply, "HelloReply")?;
            // The acceptor's choice, checked as a range of one.
            let version = agree_version(reply.version, reply.version).inspect_err(|_| refuse(s, "unsupported protocol version"))?;
            if !equal(&reply.mac, &key.mac(b"acceptor", &mine, &reply.nonce)) {
                refuse(s, "authentication failed");
                return Err(WireError::Auth("the peer does not hold the cluster key"));
            }
            let auth = Auth { mac: key.mac(b"opener", &reply.nonce, &mine).to_vec() };
            write_frame(s, FrameType::Auth, &auth.encode_to_vec(), None)?;
            Ok(Session { version, peer: reply.name })
        }
        Role::Acceptor => {
            let hello: Hello = expect(s, FrameType::Hello, "Hello")?;
            let version = agree_version(hello.min_version, hello.max_version).inspect_err(|_| refuse(s, "unsupported protocol version"))?;
            let mine = nonce()?;
            let reply =
                HelloReply { version, nonce: mine.clone(), mac: key.mac(b"acceptor", &hello.nonce, &mine).to_vec(), name: name.into() };
            write_frame(s, FrameType::HelloReply, &reply.encode_to_vec(), None)?;
            let auth: Auth = expect(s, FrameType::Auth, "Auth")?;
            if !equal(&auth.mac, &key.mac(b"opener", &mine, &hello.nonce)) {
                refuse(s, "authentication failed");
                return Err(WireError::Auth("the peer does not hold the cluster key"));
            }
            Ok(Session { version, peer: hello.name })
        }
    }
}

/// The handshake inside a channel that has authenticated both ends
/// already (the mover's mutual TLS): the protocol version is agreed and
/// the opener says which host it is, which `check` compares with what the
/// channel proved (its certificate) before the acceptor answers. No
/// challenge: the cluster key is not used. A refused opener is told why
/// in an Error frame and nothing else happens on the connection.
pub fn hello<S: Read + Write>(s: &mut S, role: Role, name: &str, check: impl FnOnce(&str) -> Result<(), String>) -> Result<Session> {
    let refuse = |s: &mut S, why: &str| {
        let _ = write_frame(s, FrameType::Error, why.as_bytes(), None);
        let _ = s.flush();
    };
    match role {
        Role::Opener => {
            let hello = Hello { max_version: PROTOCOL_VERSION, min_version: MIN_PROTOCOL_VERSION, nonce: Vec::new(), name: name.into() };
            write_frame(s, FrameType::Hello, &hello.encode_to_vec(), None)?;
            s.flush().map_err(|source| WireError::Io { op: "send frame", source })?;
            let reply: HelloReply = expect(s, FrameType::HelloReply, "HelloReply")?;
            // The acceptor's choice, checked as a range of one.
            let version = agree_version(reply.version, reply.version).inspect_err(|_| refuse(s, "unsupported protocol version"))?;
            if let Err(why) = check(&reply.name) {
                refuse(s, &why);
                return Err(WireError::Identity(why));
            }
            Ok(Session { version, peer: reply.name })
        }
        Role::Acceptor => {
            let hello: Hello = expect(s, FrameType::Hello, "Hello")?;
            let version = agree_version(hello.min_version, hello.max_version).inspect_err(|_| refuse(s, "unsupported protocol version"))?;
            if let Err(why) = check(&hello.name) {
                refuse(s, &why);
                return Err(WireError::Identity(why));
            }
            let reply = HelloReply { version, nonce: Vec::new(), mac: Vec::new(), name: name.into() };
            write_frame(s, FrameType::HelloReply, &reply.encode_to_vec(), None)?;
            s.flush().map_err(|source| WireError::Io { op: "send frame", source })?;
            Ok(Session { version, peer: hello.name })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agree_version_picks_the_newest_common_or_refuses() {
        let (lo, hi) = (MIN_PROTOCOL_VERSION, PROTOCOL_VERSION);
        // (peer's min, peer's max) -> the version, or None.
        let cases = [
            ((lo, hi), Some(hi)),
            ((lo, hi + 5), Some(hi)),
            ((0, lo), Some(lo)),
            ((hi, hi), Some(hi)),
            ((lo, lo), Some(lo)),
            ((hi + 1, hi + 3), None),
            ((0, lo.saturating_sub(1)), if lo == 0 { Some(0) } else { None }),
            ((hi, lo.saturating_sub(1)), None),
        ];
        for ((min, max), want) in cases {
            match (agree_version(min, max), want) {
                (Ok(v), Some(w)) => assert_eq!(v, w, "{min}..={max}"),
                (Err(WireError::Version { min: a, max: b }), None) => assert_eq!((a, b), (min, max)),
                (got, want) => panic!("{min}..={max}: got {got:?}, want {want:?}"),
            }
        }
    }
    use std::os::unix::net::UnixStream;

    #[test]
    fn hello_agrees_and_refuses_a_name_the_check_does_not_accept() {
        let (mut a, mut b) = pair();
        let t =
            std::thread::spawn(move || hello(&mut b, Role::Acceptor, "h2", |n| if n == "h1" { Ok(()) } else { Err(format!("not {n}")) }));
        let s = hello(&mut a, Role::Opener, "h1", |n| if n == "h2" { Ok(()) } else { Err("not h2".into()) }).unwrap();
        assert_eq!(s, Session { version: PROTOCOL_VERSION, peer: "h2".into() });
        assert_eq!(t.join().unwrap().unwrap(), Session { version: PROTOCOL_VERSION, peer: "h1".into() });
        let (mut a, mut b) = pair();
        let t = std::thread::spawn(move || hello(&mut b, Role::Acceptor, "h2", |n| Err(format!("the certificate is not {n}'s"))));
        let e = hello(&mut a, Role::Opener, "h2", |_| Ok(())).unwrap_err();
        assert!(matches!(&e, WireError::Peer(w) if w == "the certificate is not h2's"), "{e:?}");
        assert!(matches!(t.join().unwrap(), Err(WireError::Identity(_))));
    }

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[test]
    fn frames_round_trip_plain_and_compressed() {
        let (mut a, mut b) = pair();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 7) as u8).collect();
        let sent = write_frame(&mut a, FrameType::Blob, &data, Some(1)).unwrap();
        assert!(sent < data.len() as u64 / 4, "compressible data was sent as {sent} bytes");
        write_frame(&mut a, FrameType::Control, b"x", Some(1)).unwrap();
        assert_eq!(read_frame(&mut b).unwrap(), Frame { kind: FrameType::Blob, payload: data });
        assert_eq!(read_frame(&mut b).unwrap(), Frame { kind: FrameType::Control, payload: b"x".to_vec() });
    }

    /// A frame written in parts is the frame of the parts joined, and the
    /// reusing reader gives back each payload exactly, large or small,
    /// plain or compressed, and refuses a flipped byte.
    #[test]
    fn parts_and_the_reusing_reader_agree_with_whole_frames() {
        let big: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let (head, tail) = big.split_at(16);
        for compress in [None, Some(1)] {
            let (mut whole, mut split) = (Vec::new(), Vec::new());
            write_frame(&mut whole, FrameType::Pages, &big, compress).unwrap();
            write_frame_parts(&mut split, FrameType::Pages, &[head, tail], compress).unwrap();
            assert_eq!(whole, split, "compress {compress:?}");
        }
        let mut stream = Vec::new();
        write_frame_parts(&mut stream, FrameType::Pages, &[head, tail], None).unwrap();
        write_frame(&mut stream, FrameType::Control, b"small", None).unwrap();
        let text = vec![b'a'; 50_000];
        write_frame(&mut stream, FrameType::Blob, &text, Some(3)).unwrap();
        write_frame(&mut stream, FrameType::Pages, &big[..8192], None).unwrap();
        let mut rd = FrameReader::new();
        let mut r = stream.as_slice();
        assert_eq!(rd.read(&mut r).unwrap(), (FrameType::Pages, &big[..]));
        assert_eq!(rd.read(&mut r).unwrap(), (FrameType::Control, &b"small"[..]));
        assert_eq!(rd.read(&mut r).unwrap(), (FrameType::Blob, &text[..]));
        assert_eq!(rd.read(&mut r).unwrap(), (FrameType::Pages, &big[..8192]));
        assert!(rd.read(&mut r).is_err(), "read past the end");
        let mut bad = Vec::new();
        write_frame(&mut bad, FrameType::Pages, &big[..4096], None).unwrap();
        bad[HEADER_LEN + 100] ^= 1;
        assert!(matches!(FrameReader::new().read(&mut bad.as_slice()), Err(WireError::Checksum { .. })));
    }

    #[test]
    fn every_corrupted_byte_is_caught() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameType::Pages, &[9u8; 600], Some(3)).unwrap();
        assert!(decode_frame(&buf).is_ok());
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0x10;
            assert!(decode_frame(&b).is_err(), "flip at byte {i} accepted");
        }
    }

    #[test]
    fn handshake_agrees_with_the_same_key() {
        let key = Key::derive(b"cluster secret");
        let (mut a, mut b) = pair();
        let k2 = key.clone();
        let t = std::thread::spawn(move || handshake(&mut b, Role::Acceptor, &k2, "h2"));
        let s = handshake(&mut a, Role::Opener, &key, "h1").unwrap();
        assert_eq!(s, Session { version: PROTOCOL_VERSION, peer: "h2".into() });
        assert_eq!(t.join().unwrap().unwrap(), Session { version: PROTOCOL_VERSION, peer: "h1".into() });
    }

    #[test]
    fn wrong_key_fails_on_both_sides() {
        let (mut a, mut b) = pair();
        let t = std::thread::spawn(move || handshake(&mut b, Role::Acceptor, &Key::derive(b"right"), "h2"));
        let opener = handshake(&mut a, Role::Opener, &Key::derive(b"wrong"), "h1");
        assert!(matches!(opener, Err(WireError::Auth(_))), "{opener:?}");
        let acceptor = t.join().unwrap();
        assert!(matches!(acceptor, Err(WireError::Peer(_)) | Err(WireError::Auth(_))), "{acceptor:?}");
    }

    #[test]
    fn impostor_without_key_cannot_pass_as_opener() {
        // An opener that replays garbage for the final proof is refused.
        let (mut a, mut b) = pair();
        let t = std::thread::spawn(move || handshake(&mut b, Role::Acceptor, &Key::derive(b"k"), "h2"));
        let hello = Hello { max_version: 1, min_version: 1, nonce: vec![1; 32], name: "evil".into() };
        write_frame(&mut a, FrameType::Hello, &hello.encode_to_vec(), None).unwrap();
        let _reply = read_frame(&mut a).unwrap();
        write_frame(&mut a, FrameType::Auth, &Auth { mac: vec![0; 32] }.encode_to_vec(), None).unwrap();
        assert!(matches!(t.join().unwrap(), Err(WireError::Auth(_))));
        assert_eq!(read_frame(&mut a).unwrap().kind, FrameType::Error);
    }

    #[test]
    fn no_common_version_is_named() {
        let (mut a, mut b) = pair();
        let t = std::thread::spawn(move || handshake(&mut b, Role::Acceptor, &Key::derive(b"k"), "h2"));
        let hello = Hello { max_version: 9, min_version: 7, nonce: vec![1; 32], name: "future".into() };
        write_frame(&mut a, FrameType::Hello, &hello.encode_to_vec(), None).unwrap();
        let e = t.join().unwrap().unwrap_err();
        assert!(e.to_string().contains("no common protocol version"), "{e}");
        assert_eq!(read_frame(&mut a).unwrap().kind, FrameType::Error);
    }

    /// Before the handshake a frame larger than a handshake message is
    /// refused on its header alone: the acceptor neither waits for nor
    /// holds the 64 MiB announced.
    #[test]
    fn an_oversized_frame_before_the_handshake_is_refused_on_its_header() {
        let (mut a, mut b) = pair();
        let t = std::thread::spawn(move || handshake(&mut b, Role::Acceptor, &Key::derive(b"k"), "h2"));
        let mut h = [0u8; HEADER_LEN];
        h[..4].copy_from_slice(&MAGIC);
        h[4..6].copy_from_slice(&(FrameType::Hello as u16).to_le_bytes());
        h[8..12].copy_from_slice(&MAX_PAYLOAD.to_le_bytes());
        h[12..16].copy_from_slice(&MAX_PAYLOAD.to_le_bytes());
        a.write_all(&h).unwrap();
        let e = t.join().unwrap().unwrap_err();
        assert!(matches!(e, WireError::TooLarge { len: MAX_PAYLOAD, limit: HANDSHAKE_MAX_PAYLOAD }), "{e:?}");
        // The same for a refusal: a peer's error text is no way around it.
        let (mut a, mut b) = pair();
        let t = std::thread::spawn(move || handshake(&mut b, Role::Acceptor, &Key::derive(b"k"), "h2"));
        let big = vec![b'e'; HANDSHAKE_MAX_PAYLOAD as usize + 1];
        let writer = std::thread::spawn(move || write_frame(&mut a, FrameType::Error, &big, None));
        assert!(matches!(t.join().unwrap(), Err(WireError::TooLarge { .. })));
        let _ = writer.join();
    }

    /// A frame announced longer than the bytes that follow is an error,
    /// not a buffer of the announced size.
    #[test]
    fn a_short_payload_is_an_error() {
        let mut buf = Vec::new();
        write_frame(&mut buf, FrameType::Blob, &[1u8; 1000], None).unwrap();
        buf.truncate(HEADER_LEN + 10);
        assert!(matches!(read_frame(&mut buf.as_slice()), Err(WireError::Io { op: "receive frame payload", .. })));
    }

    #[test]
    fn peer_text_is_cut_and_escaped() {
        assert_eq!(peer_text(b"no space left"), "no space left");
        assert_eq!(peer_text(b"a\nfake log line\x1b[31m"), "a\\nfake log line\\u{1b}[31m");
        let long = peer_text(&vec![b'x'; 10 << 20]);
        assert!(long.len() < MAX_PEER_TEXT + 40, "{} bytes", long.len());
        assert!(long.ends_with(&format!("... ({} bytes in all)", 10 << 20)), "{long}");
        // Cut inside a character: no panic, a replacement at the end.
        let mut multi = vec![b'a'; MAX_PEER_TEXT - 1];
        multi.extend_from_slice("é and more".as_bytes());
        assert!(peer_text(&multi).starts_with(&"a".repeat(MAX_PEER_TEXT - 1)));
    }

    #[test]
    fn pages_header_checks_length() {
        let h = PagesHeader { pid: 7, count: 2, vaddr: 0x1000 };
        let mut p = h.encode().to_vec();
        p.extend_from_slice(&[0u8; 8192]);
        assert_eq!(PagesHeader::decode(&p).unwrap().0, h);
        assert!(PagesHeader::decode(&p[..p.len() - 1]).is_none());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = decode_frame(&bytes);
        }
    }
}
