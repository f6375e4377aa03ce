//! Mutual TLS for the mover: the connection between two hosts' lpmd that
//! carries a partition's state.
//!
//! rustls runs the TLS 1.3 handshake (both certificates checked against
//! the site CA, the server's for the host the client means to reach); the
//! traffic keys are then taken out of it ([`connect`], [`accept`]) and the
//! connection goes on as two independent halves over the same socket, a
//! [`Sealer`] that writes TLS records and an [`Opener`] that reads them.
//! The mover reads on one thread while another writes (a keep-alive beside
//! a long dump, a reader of the target's last word beside the page
//! stream): one rustls connection would need a lock held across blocking
//! socket calls in both directions. Each half seals or opens with rustls'
//! own record protection for the negotiated suite (the
//! `MessageEncrypter`/`MessageDecrypter` of its TLS 1.3 AEAD), so what
//! goes on the wire is standard TLS 1.3 application data; the halves are
//! the shape the kernel's TLS offload (kTLS) takes too, with the same
//! keys, where the kernel has it (`CONFIG_TLS`).
//!
//! After the handshake the server says it is ready (through rustls, so a
//! client whose certificate it refused reads the alert in [`connect`]),
//! and then neither side sends anything rustls would have to see: the
//! server sends no session tickets, nobody sends a key update, and the
//! client sends nothing before the server's words (so that no application
//! data sits in rustls' buffers when its keys are taken out).
//! A record of any other kind, or one that fails its authentication tag,
//! is an error: the stream is never read past a record it cannot trust.

use std::io::{IoSlice, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::sync::Arc;

use rustls::crypto::cipher::{InboundOpaqueMessage, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage};
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, ConnectionTrafficSecrets, ContentType, ProtocolVersion, ServerConfig, SupportedCipherSuite};

use crate::{client_config, host_server_name, server_config, Identity, Result, TrustError};

pub use rustls::{ClientConfig as MoverClientConfig, ServerConfig as MoverServerConfig};

/// The application protocol both ends name in the handshake: a control
/// API client or server on the same CA cannot be taken for a mover.
pub const ALPN: &[u8] = b"lpm-mover/1";
/// Most plaintext bytes in one TLS record (RFC 8446, 5.1).
const MAX_FRAGMENT: usize = 16 << 10;
/// Most bytes of a record's body as sent: the plaintext, its content
/// type, padding and the tag (RFC 8446, 5.2).
const MAX_CIPHERTEXT: usize = MAX_FRAGMENT + 256;
const HEADER: usize = 5;
/// Records sealed before each write to the socket: one system call for
/// a quarter MiB of pages rather than one per record.
const BATCH: usize = 16;
/// The read buffer: several records per system call.
const IN_BUF: usize = BATCH * (HEADER + MAX_CIPHERTEXT);

/// The mover's server side: [`server_config`] that names [`ALPN`], sends
/// no session tickets (nothing after the handshake but the mover's own
/// records) and lets the keys be taken out.
pub fn mover_server_config(id: &Identity) -> Result<Arc<ServerConfig>> {
    let mut c = (*server_config(id)?).clone();
    c.alpn_protocols = vec![ALPN.to_vec()];
    c.send_tls13_tickets = 0;
    c.enable_secret_extraction = true;
    Ok(Arc::new(c))
}

/// The mover's client side: [`client_config`] that names [`ALPN`], never
/// resumes and lets the keys be taken out.
pub fn mover_client_config(id: &Identity) -> Result<Arc<ClientConfig>> {
    let mut c = (*client_config(id)?).clone();
    c.alpn_protocols = vec![ALPN.to_vec()];
    c.resumption = rustls::client::Resumption::disabled();
    c.enable_secret_extraction = true;
    Ok(Arc::new(c))
}

/// A finished handshake: the traffic keys of both directions and the
/// certificates the peer presented (already verified against the CA).
pub struct Established {
    suite: &'static rustls::Tls13CipherSuite,
    tx: (u64, ConnectionTrafficSecrets),
    rx: (u64, ConnectionTrafficSecrets),
    peer: Vec<CertificateDer<'static>>,
}

impl std::fmt::Debug for Established {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Established").field("suite", &self.suite.common.suite).finish_non_exhaustive()
    }
}

fn tls_err(what: &str, e: impl std::fmt::Display) -> TrustError {
    TrustError::Handshake(format!("{what}: {e}"))
}

/// Runs the client side of the handshake on `io` with the host `server`,
/// whose certificate must be `server`'s ([`host_server_name`]).
pub fn connect<S: Read + Write>(io: &mut S, config: Arc<ClientConfig>, server: &str) -> Result<Established> {
    let name = host_server_name(server)?;
    let conn = rustls::ClientConnection::new(config, name).map_err(|e| tls_err("start the TLS handshake", e))?;
    finish(io, conn.into(), false)
}

/// Runs the server side of the handshake on `io`: the client must present
/// a certificate of the site CA (which identity it is, the caller checks
/// with [`crate::check_peer`] against the name the client claims).
pub fn accept<S: Read + Write>(io: &mut S, config: Arc<ServerConfig>) -> Result<Established> {
    let conn = rustls::ServerConnection::new(config).map_err(|e| tls_err("start the TLS handshake", e))?;
    finish(io, conn.into(), true)
}

/// The server's first words after the handshake, through rustls: in
/// TLS 1.3 a client finishes its handshake before the server has checked
/// its certificate, and learns of a refusal only by reading; a client
/// that waits for these words learns it in [`connect`]. The client speaks
/// only after them, so nothing of its own sits in the server's rustls
/// buffers when the keys are taken out.
const READY: &[u8] = b"lpm-mover ready\n";

fn finish<S: Read + Write>(io: &mut S, mut conn: rustls::Connection, server: bool) -> Result<Established> {
    let hs = |e: std::io::Error| tls_err("TLS handshake", e);
    while conn.is_handshaking() {
        conn.complete_io(io).map_err(hs)?;
    }
    if conn.alpn_protocol() != Some(ALPN) {
        return Err(TrustError::Handshake("the peer is not an lpm mover (no lpm-mover application protocol)".into()));
    }
    if server {
        conn.writer().write_all(READY).map_err(hs)?;
        while conn.wants_write() {
            conn.write_tls(io).map_err(hs)?;
        }
        io.flush().map_err(hs)?;
    } else {
        let mut got = [0u8; READY.len()];
        let mut n = 0;
        while n < got.len() {
            match conn.reader().read(&mut got[n..]) {
                Ok(0) => return Err(TrustError::Handshake("the peer closed the TLS connection".into())),
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    // Reads the next records (and reports an alert).
                    conn.complete_io(io).map_err(hs)?;
                }
                Err(e) => return Err(hs(e)),
            }
        }
        if got != READY {
            return Err(TrustError::Handshake("the peer is not an lpm mover (wrong first words)".into()));
        }
    }
    let state = conn.process_new_packets().map_err(|e| tls_err("TLS handshake", e))?;
    if state.plaintext_bytes_to_read() > 0 || state.tls_bytes_to_write() > 0 {
        return Err(TrustError::Handshake("the peer sent data before its turn".into()));
    }
    let Some(SupportedCipherSuite::Tls13(suite)) = conn.negotiated_cipher_suite() else {
        return Err(TrustError::Handshake("not a TLS 1.3 connection".into()));
    };
    let peer: Vec<CertificateDer<'static>> =
        conn.peer_certificates().map(|c| c.iter().map(|c| c.clone().into_owned()).collect()).unwrap_or_default();
    let secrets = conn.dangerous_extract_secrets().map_err(|e| tls_err("take the traffic keys", e))?;
    Ok(Established { suite, tx: secrets.tx, rx: secrets.rx, peer })
}

type KeyIv = (rustls::crypto::cipher::AeadKey, rustls::crypto::cipher::Iv);

fn key_iv(s: ConnectionTrafficSecrets) -> std::io::Result<KeyIv> {
    match s {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => Ok((key, iv)),
        // Only the suites above are offered (ring's TLS 1.3 ones).
        _ => Err(invalid("traffic keys of an unknown cipher".into())),
    }
}

impl Established {
    /// The certificates the peer presented, leaf first.
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        &self.peer
    }

    /// The negotiated cipher suite's name, for logs and reports.
    pub fn suite(&self) -> String {
        format!("{:?}", self.suite.common.suite)
    }

    /// The two halves of the connection over `socket` (each holds a
    /// clone of it).
    pub fn split(self, socket: &TcpStream) -> std::io::Result<(Sealer, Opener)> {
        let limit = self.suite.common.confidentiality_limit;
        let (tx_seq, tx) = self.tx;
        let (rx_seq, rx) = self.rx;
        let (k, iv) = key_iv(tx)?;
        let sealer = Sealer {
            s: socket.try_clone()?,
            enc: self.suite.aead_alg.encrypter(k, iv),
            seq: tx_seq,
            limit,
            out: Vec::new(),
            sent: 0,
            staged: Vec::new(),
        };
        let (k, iv) = key_iv(rx)?;
        let opener = Opener {
            s: socket.try_clone()?,
            dec: self.suite.aead_alg.decrypter(k, iv),
            seq: rx_seq,
            buf: vec![0; IN_BUF],
            start: 0,
            end: 0,
            plain: 0..0,
            eof: false,
        };
        Ok((sealer, opener))
    }
}

fn invalid(why: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why)
}

/// The sending half: writes go out as TLS 1.3 application data records.
/// It buffers like a `BufWriter` (less than a record, until a flush), and
/// what the socket did not take yet goes out on the next write or flush.
pub struct Sealer {
    s: TcpStream,
    enc: Box<dyn MessageEncrypter>,
    seq: u64,
    limit: u64,
    /// Sealed records not sent yet, and how much of the first was sent.
    out: Vec<Vec<u8>>,
    sent: usize,
    /// Written, less than a record, not sealed yet.
    staged: Vec<u8>,
}

impl Sealer {
    /// The socket (for its options and timeouts).
    pub fn socket(&self) -> &TcpStream {
        &self.s
    }

    fn seal(&mut self, chunks: &[&[u8]]) -> std::io::Result<()> {
        if self.seq >= self.limit {
            // Never reached by a migration (2^23 or more records of 16
            // KiB); failing beats weakening the key.
            return Err(invalid(format!("the TLS key's limit of {} records is reached; reconnect", self.limit)));
        }
        let msg = OutboundPlainMessage {
            typ: ContentType::ApplicationData,
            version: ProtocolVersion::TLSv1_2,
            payload: OutboundChunks::new(chunks),
        };
        let rec = self.enc.encrypt(msg, self.seq).map_err(|e| invalid(format!("seal a TLS record: {e}")))?;
        self.seq += 1;
        self.out.push(rec.encode());
        Ok(())
    }

    /// Sends what is sealed and not sent yet.
    fn drain(&mut self) -> std::io::Result<()> {
        while !self.out.is_empty() {
            let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(self.out.len());
            slices.push(IoSlice::new(&self.out[0][self.sent..]));
            slices.extend(self.out[1..].iter().map(|r| IoSlice::new(r)));
            let mut n = match self.s.write_vectored(&slices) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            while n > 0 {
                let left = self.out[0].len() - self.sent;
                if n < left {
                    self.sent += n;
                    break;
                }
                n -= left;
                self.out.remove(0);
                self.sent = 0;
            }
        }
        Ok(())
    }
}

impl Write for Sealer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    /// Seals whole records of what was staged and `bufs`, at most a
    /// batch, and stages the rest (less than a record) for the next write
    /// or flush: a frame's header and its pages share records, and a
    /// small message waits for its flush rather than taking a record of
    /// its own for each write.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        self.drain()?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if self.staged.len() + total < MAX_FRAGMENT {
            for b in bufs {
                self.staged.extend_from_slice(b);
            }
            return Ok(total);
        }
        let old = std::mem::take(&mut self.staged);
        let mut taken = 0;
        let mut chunk: Vec<&[u8]> = vec![&old];
        let mut chunk_len = old.len();
        let mut records = 0;
        'bufs: for b in bufs {
            let mut b: &[u8] = b;
            while !b.is_empty() {
                let n = b.len().min(MAX_FRAGMENT - chunk_len);
                chunk.push(&b[..n]);
                chunk_len += n;
                taken += n;
                b = &b[n..];
                if chunk_len == MAX_FRAGMENT {
                    self.seal(&chunk)?;
                    chunk.clear();
                    chunk_len = 0;
                    records += 1;
                    if records == BATCH {
                        break 'bufs;
                    }
                }
            }
        }
        // Less than a record is left (and not the old stage: that went
        // into the first record).
        let mut staged = Vec::with_capacity(MAX_FRAGMENT);
        for c in chunk {
            staged.extend_from_slice(c);
        }
        self.staged = staged;
        // What was sealed is taken: a socket that does not take it now
        // is the next write's or flush's to report.
        let _ = self.drain();
        Ok(taken)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.staged.is_empty() {
            let staged = std::mem::take(&mut self.staged);
            self.seal(&[&staged])?;
        }
        self.drain()
    }
}

/// The receiving half: reads TLS 1.3 records, checks each one's tag and
/// gives back its application data.
pub struct Opener {
    s: TcpStream,
    dec: Box<dyn MessageDecrypter>,
    seq: u64,
    /// Bytes received, `start..end` not yet opened.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Opened application data not yet read.
    plain: Range<usize>,
    eof: bool,
}

impl Opener {
    /// The socket (for its options and timeouts).
    pub fn socket(&self) -> &TcpStream {
        &self.s
    }

    /// Opens the record at `start` if it is all here; `false` if more
    /// bytes are needed.
    fn open_one(&mut self) -> std::io::Result<bool> {
        let have = self.end - self.start;
        if have < HEADER {
            return Ok(false);
        }
        let h = &self.buf[self.start..self.start + HEADER];
        if h[0] != u8::from(ContentType::ApplicationData) {
            return Err(invalid(format!("TLS record of type {} after the handshake", h[0])));
        }
        let len = u16::from_be_bytes([h[3], h[4]]) as usize;
        if len > MAX_CIPHERTEXT {
            return Err(invalid(format!("TLS record of {len} bytes (at most {MAX_CIPHERTEXT})")));
        }
        if have < HEADER + len {
            return Ok(false);
        }
        let body = self.start + HEADER;
        let msg = InboundOpaqueMessage::new(ContentType::ApplicationData, ProtocolVersion::TLSv1_2, &mut self.buf[body..body + len]);
        let plain = self
            .dec
            .decrypt(msg, self.seq)
            .map_err(|e| invalid(format!("TLS record {} fails its authentication ({e}): altered or corrupted on the way", self.seq)))?;
        self.seq += 1;
        let (typ, n, second) = (plain.typ, plain.payload.len(), plain.payload.get(1).copied());
        self.start = body + len;
        match typ {
            ContentType::ApplicationData => self.plain = body..body + n,
            // close_notify: the peer ends the stream here.
            ContentType::Alert if n == 2 && second == Some(0) => self.eof = true,
            ContentType::Alert => return Err(invalid(format!("TLS alert from the peer: {:?}", &self.buf[body..body + n]))),
            other => return Err(invalid(format!("TLS {other:?} message after the handshake (not used by the mover)"))),
        }
        Ok(true)
    }
}

impl Read for Opener {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if !self.plain.is_empty() {
                let n = out.len().min(self.plain.len());
                out[..n].copy_from_slice(&self.buf[self.plain.start..self.plain.start + n]);
                self.plain.start += n;
                return Ok(n);
            }
            if self.eof || out.is_empty() {
                return Ok(0);
            }
            if self.open_one()? {
                continue;
            }
            // Room for a whole record after what is kept.
            if self.buf.len() - self.end < HEADER + MAX_CIPHERTEXT {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            // A timeout or a non-blocking socket's WouldBlock leaves what
            // came so far in place for the next read.
            let n = self.s.read(&mut self.buf[self.end..])?;
            if n == 0 {
                if self.start == self.end {
                    return Ok(0);
                }
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the connection ended inside a TLS record"));
            }
            self.end += n;
        }
    }
}

#[cfg(test)]
mod tests;
