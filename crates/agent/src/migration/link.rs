//! How a mover connection is opened and accepted: mutual TLS with the
//! site's certificates (lpm_trust::mover), or, only when the host was
//! started with `insecure`, the plain frames behind the cluster key's
//! challenge.
//!
//! With TLS the cluster key plays no part: the certificates prove both
//! hosts, and the TLS records encrypt and authenticate every byte after
//! the handshake. The connecting host checks the target's certificate is
//! for the host it means to reach; the accepting host checks the client's
//! is a host's of the same CA, for the name it claims in its Hello
//! (lpm_wire::hello), before it reads anything else. A host of either
//! mode refuses a peer of the other with a word that says so: the first
//! byte tells a TLS ClientHello (0x16) from a frame ('L' of LPMW).

use std::io::{BufWriter, IoSlice, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use lpm_trust::mover::{Opener, Sealer};
use lpm_wire::{FrameType, Role};

use super::mover_timeout;
use crate::gate::{Deadline, Timeouts};
use crate::state::{Agent, Options};

/// A TLS record of the handshake starts with this byte.
const TLS_HANDSHAKE: u8 = 0x16;

/// How this host's mover proves itself and its peers.
pub enum Trust {
    /// Mutual TLS with the site's certificates.
    Tls {
        /// For connections this host opens.
        client: Arc<lpm_trust::mover::MoverClientConfig>,
        /// For connections it accepts.
        server: Arc<lpm_trust::mover::MoverServerConfig>,
    },
    /// Plain frames behind the cluster key's challenge (`insecure`).
    Plain,
}

impl Trust {
    /// The mover's trust of a host set up with `opts`: TLS with its
    /// identity, plain when it was started `insecure`, and an error that
    /// says what to configure when it has neither.
    pub fn of(opts: &Options) -> Result<Trust> {
        if opts.insecure {
            tracing::warn!(host = %opts.host, "the mover runs in plain mode (insecure): partitions' memory crosses the network in clear");
            return Ok(Trust::Plain);
        }
        let Some(id) = &opts.tls else {
            bail!(
                "host {h} has no TLS identity for its mover: set tls_ca, tls_cert and tls_key in its configuration \
                 (made by `lpm pki init` and `lpm host enroll {h}`), or, to move partitions in clear for measurement \
                 only, `insecure = true` (--insecure)",
                h = opts.host
            );
        };
        let client = lpm_trust::mover::mover_client_config(id).context("the mover's TLS client configuration")?;
        let server = lpm_trust::mover::mover_server_config(id).context("the mover's TLS server configuration")?;
        Ok(Trust::Tls { client, server })
    }
}

/// The receiving half of a mover connection.
pub(crate) enum Rx {
    Plain(TcpStream),
    Tls(Box<Opener>),
}

/// The sending half of a mover connection, buffered.
pub(crate) enum Tx {
    Plain(BufWriter<TcpStream>),
    Tls(Box<Sealer>),
}

impl Rx {
    /// The socket (for its timeouts and blocking mode).
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Rx::Plain(s) => s,
            Rx::Tls(o) => o.socket(),
        }
    }
}

impl Tx {
    /// The socket (for its timeouts).
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Tx::Plain(w) => w.get_ref(),
            Tx::Tls(s) => s.socket(),
        }
    }
}

impl Read for Rx {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Rx::Plain(s) => s.read(buf),
            Rx::Tls(o) => o.read(buf),
        }
    }
}

impl Write for Tx {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Tx::Plain(w) => w.write(buf),
            Tx::Tls(s) => s.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> std::io::Result<usize> {
        match self {
            Tx::Plain(w) => w.write_vectored(bufs),
            Tx::Tls(s) => s.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Tx::Plain(w) => w.flush(),
            Tx::Tls(s) => s.flush(),
        }
    }
}

/// Both halves as one stream, for the handshake.
struct Duplex<'a> {
    r: &'a mut Rx,
    w: &'a mut Tx,
}

impl Read for Duplex<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.r.read(buf)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.w.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.w.flush()
    }
}

impl Timeouts for Duplex<'_> {
    fn set_timeouts(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.r.socket().set_timeouts(t)
    }
}

/// A stream that keeps the first bytes it read: a TLS client that meets
/// a plain mover reads a frame where it wanted a TLS record, and says so.
struct Sniff<'a> {
    s: &'a mut TcpStream,
    first: Vec<u8>,
}

impl Read for Sniff<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.s.read(buf)?;
        let keep = n.min(lpm_wire::HANDSHAKE_MAX_PAYLOAD as usize - self.first.len().min(lpm_wire::HANDSHAKE_MAX_PAYLOAD as usize));
        self.first.extend_from_slice(&buf[..keep]);
        Ok(n)
    }
}

impl Write for Sniff<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.s.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.s.flush()
    }
}

/// What a plain mover said instead of a TLS record, if it was a frame.
fn plain_refusal(first: &[u8]) -> Option<String> {
    if !first.starts_with(b"LPMW") {
        return None;
    }
    Some(match lpm_wire::decode_frame(first) {
        Ok(f) if f.kind == FrameType::Error => lpm_wire::peer_text(&f.payload),
        _ => "a plain frame".into(),
    })
}

/// Opens a mover connection to host `peer` at `addr`: the halves, after
/// the handshake, with the mover timeout on the socket.
pub(crate) fn open(agent: &Agent, addr: &str, peer: &str, write_buffer: usize) -> Result<(Rx, Tx)> {
    let sa = addr.to_socket_addrs().with_context(|| format!("resolve {addr}"))?.next().ok_or_else(|| anyhow!("no address for {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sa, Duration::from_secs(5)).with_context(|| format!("connect to the mover at {addr}"))?;
    s.set_nodelay(true).ok();
    s.set_timeouts(Some(mover_timeout())).context("set timeout")?;
    let me = &agent.opts.host;
    match &agent.trust {
        Trust::Plain => {
            lpm_wire::handshake(&mut s, Role::Opener, &agent.opts.key, me)
                .with_context(|| format!("authenticate with the mover at {addr}"))?;
            Ok((Rx::Plain(s.try_clone().context("clone socket")?), Tx::Plain(BufWriter::with_capacity(write_buffer, s))))
        }
        Trust::Tls { client, .. } => {
            let mut sniff = Sniff { s: &mut s, first: Vec::new() };
            let est = match lpm_trust::mover::connect(&mut sniff, client.clone(), peer) {
                Ok(est) => est,
                Err(e) => {
                    if let Some(said) = plain_refusal(&sniff.first) {
                        bail!("the mover of {peer} at {addr} runs in plain mode (insecure) and this host requires mutual TLS: it said {said:?}");
                    }
                    return Err(e).with_context(|| format!("TLS handshake with {peer}'s mover at {addr}"));
                }
            };
            let (tx, rx) = est.split(&s).context("clone socket")?;
            let (mut rx, mut tx) = (Rx::Tls(Box::new(rx)), Tx::Tls(Box::new(tx)));
            let check = |name: &str| if name == peer { Ok(()) } else { Err(format!("{peer}'s mover answered as {name}")) };
            lpm_wire::hello(&mut Duplex { r: &mut rx, w: &mut tx }, Role::Opener, me, check)
                .with_context(|| format!("hello to {peer}'s mover at {addr}"))?;
            Ok((rx, tx))
        }
    }
}

/// Accepts a mover connection within `deadline` (the gate's handshake
/// time): the halves and the peer's name. Every refusal is an error the
/// caller logs as a failed handshake.
pub(crate) fn accept(agent: &Agent, mut s: TcpStream, deadline: Duration) -> Result<(Rx, Tx, lpm_wire::Session)> {
    let until = Instant::now() + deadline;
    let left = || until.saturating_duration_since(Instant::now());
    s.set_timeouts(Some(deadline)).context("set timeout")?;
    let mut first = [0u8; 1];
    let n = s.peek(&mut first).context("wait for the peer's first bytes")?;
    if n == 0 {
        bail!("the peer closed before a word");
    }
    let me = &agent.opts.host;
    // The peer's first words are taken in before the refusal goes out:
    // a socket closed with unread data resets the connection, and the
    // peer would lose the word that says why.
    let refuse = |s: &mut TcpStream, why: &str| {
        let mut sink = [0u8; 16 << 10];
        let _ = Deadline::new(s, left()).read(&mut sink);
        let _ = lpm_wire::write_frame(s, FrameType::Error, why.as_bytes(), None);
        let _ = s.shutdown(std::net::Shutdown::Write);
    };
    let (rx, tx, session) = match (&agent.trust, first[0] == TLS_HANDSHAKE) {
        (Trust::Tls { .. }, false) => {
            refuse(
                &mut s,
                &format!("{me}'s mover requires mutual TLS with a site certificate; this peer connected in plain mode (insecure)"),
            );
            bail!("a plain (insecure) peer refused: this host's mover requires mutual TLS");
        }
        (Trust::Plain, true) => {
            refuse(&mut s, &format!("{me}'s mover runs in plain mode (insecure) and does not speak TLS"));
            bail!("a TLS peer refused: this host's mover runs in plain mode (insecure)");
        }
        (Trust::Plain, false) => {
            let session =
                lpm_wire::handshake(&mut Deadline::new(&mut s, left()), Role::Acceptor, &agent.opts.key, me).context("mover handshake")?;
            (Rx::Plain(s.try_clone().context("clone socket")?), Tx::Plain(BufWriter::new(s)), session)
        }
        (Trust::Tls { server, .. }, true) => {
            let est = lpm_trust::mover::accept(&mut Deadline::new(&mut s, left()), server.clone()).context("mover TLS handshake")?;
            let certs = est.peer_certificates().to_vec();
            let (tx, rx) = est.split(&s).context("clone socket")?;
            let (mut rx, mut tx) = (Rx::Tls(Box::new(rx)), Tx::Tls(Box::new(tx)));
            // The name is the peer's to choose: cut before it is logged.
            let check = |name: &str| {
                lpm_trust::check_peer(Some(&certs), lpm_trust::Role::Host, name).map_err(|e| lpm_wire::peer_text(e.to_string().as_bytes()))
            };
            let session = lpm_wire::hello(&mut Deadline::new(&mut Duplex { r: &mut rx, w: &mut tx }, left()), Role::Acceptor, me, check)
                .context("mover hello")?;
            (rx, tx, session)
        }
    };
    rx.socket().set_timeouts(Some(mover_timeout())).context("set timeout")?;
    Ok((rx, tx, session))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain mover's refusal, read by a TLS client, is named with what
    /// it said; anything else is left to the TLS error.
    #[test]
    fn a_plain_movers_refusal_is_recognised() {
        let mut f = Vec::new();
        lpm_wire::write_frame(&mut f, FrameType::Error, b"h2's mover runs in plain mode (insecure)", None).unwrap();
        assert_eq!(plain_refusal(&f).as_deref(), Some("h2's mover runs in plain mode (insecure)"));
        assert_eq!(plain_refusal(&f[..10]).as_deref(), Some("a plain frame"));
        assert_eq!(plain_refusal(&[0x15, 3, 3, 0, 2, 2, 40]), None);
    }
}
