//! Admission of connections to lpmd's control socket and mover port:
//! what a peer that has not proven the cluster key can make lpmd hold.
//!
//! Every accepted connection takes a [`Permit`] before anything is read
//! from it, or is closed at once: at most [`Limits::total`] connections
//! per listener, [`Limits::per_peer`] from one peer (an IP address on the
//! mover port, a uid on the control socket), and of those not yet
//! authenticated at most [`Limits::unauthenticated`] in all and
//! [`Limits::unauthenticated_per_peer`] per peer. Each admitted connection
//! is served by one thread (its handshake, then its requests or its
//! migration), so the permits also bound lpmd's threads: a flood of idle
//! connections once made lpmd panic when it could spawn no more.
//!
//! The handshake has a deadline ([`Limits::handshake`], enforced by
//! [`Deadline`] on every read and write, not per read: a peer that trickles
//! a byte now and then is cut off all the same), so that idle connections
//! give their place back; and one peer's unauthenticated connections can
//! hold only a few of the places, so that the others' migrations go on.
//! Refusals are logged at most once a second per listener, with how many
//! there were.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How many connections a listener admits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections at once, authenticated or not.
    pub total: usize,
    /// Connections at once from one peer.
    pub per_peer: usize,
    /// Connections at once still in their handshake.
    pub unauthenticated: usize,
    /// Connections at once from one peer still in their handshake.
    pub unauthenticated_per_peer: usize,
    /// Time a connection has for the whole handshake.
    pub handshake: Duration,
}

impl Limits {
    /// The mover port's: a source opens a connection per page stream
    /// (`--streams`, at most a few) per migration, plus a resolver now and
    /// then; four migrations at once from one host stay well under
    /// `per_peer`.
    pub const MOVER: Limits =
        Limits { total: 256, per_peer: 64, unauthenticated: 64, unauthenticated_per_peer: 8, handshake: Duration::from_secs(10) };
    /// The control socket's: local clients (the socket is root's alone),
    /// each connection one command, `lpm migrate` held for its migration.
    pub const CONTROL: Limits =
        Limits { total: 256, per_peer: 256, unauthenticated: 64, unauthenticated_per_peer: 64, handshake: Duration::from_secs(10) };
}

/// Who a connection comes from, for the per-peer limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A mover connection's source address.
    Ip(IpAddr),
    /// A control connection's user.
    Uid(u32),
    /// A control connection whose credentials could not be read.
    Unknown,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Peer::Ip(ip) => write!(f, "{ip}"),
            Peer::Uid(uid) => write!(f, "uid {uid}"),
            Peer::Unknown => f.write_str("unknown peer"),
        }
    }
}

impl Peer {
    /// The peer of a control connection: its user.
    pub fn of_unix(s: &UnixStream) -> Peer {
        nix::sys::socket::getsockopt(s, nix::sys::socket::sockopt::PeerCredentials).map(|c| Peer::Uid(c.uid())).unwrap_or(Peer::Unknown)
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `total` reached.
    Total,
    /// `per_peer` reached.
    PerPeer,
    /// `unauthenticated` reached.
    Unauthenticated,
    /// `unauthenticated_per_peer` reached.
    UnauthenticatedPerPeer,
}

#[derive(Default)]
struct Counts {
    total: usize,
    unauthenticated: usize,
    /// Per peer: (connections, of which unauthenticated).
    peers: HashMap<Peer, (usize, usize)>,
}

#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    unlogged: u64,
}

/// One listener's admission.
pub struct Gate {
    name: &'static str,
    limits: Limits,
    counts: Mutex<Counts>,
    log: Mutex<RefusalLog>,
    failures: Mutex<RefusalLog>,
}

/// A connection's place, given back when dropped.
pub struct Permit {
    gate: Arc<Gate>,
    peer: Peer,
    authenticated: bool,
}

impl Gate {
    /// A gate for the listener `name` (in its log lines).
    pub fn new(name: &'static str, limits: Limits) -> Arc<Gate> {
        Arc::new(Gate { name, limits, counts: Mutex::default(), log: Mutex::default(), failures: Mutex::default() })
    }

    /// Its limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A place for a new connection from `peer`, or why there is none.
    pub fn admit(self: &Arc<Self>, peer: Peer) -> Result<Permit, Refusal> {
        let l = &self.limits;
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (mine, mine_unauth) = c.peers.get(&peer).copied().unwrap_or((0, 0));
        let refusal = if c.total >= l.total {
            Some(Refusal::Total)
        } else if mine >= l.per_peer {
            Some(Refusal::PerPeer)
        } else if c.unauthenticated >= l.unauthenticated {
            Some(Refusal::Unauthenticated)
        } else if mine_unauth >= l.unauthenticated_per_peer {
            Some(Refusal::UnauthenticatedPerPeer)
        } else {
            None
        };
        if let Some(r) = refusal {
            drop(c);
            self.refused(peer, &format!("{r:?}"));
            return Err(r);
        }
        c.total += 1;
        c.unauthenticated += 1;
        *c.peers.entry(peer).or_default() = (mine + 1, mine_unauth + 1);
        Ok(Permit { gate: self.clone(), peer, authenticated: false })
    }

    /// Logs a refused connection, at most once a second, with the number
    /// refused since the last line: a flood must not flood the log too.
    pub fn refused(&self, peer: Peer, why: &str) {
        let mut g = self.log.lock().unwrap_or_else(|e| e.into_inner());
        g.unlogged += 1;
        let now = Instant::now();
        if g.last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        tracing::warn!(listener = self.name, %peer, why, refused = g.unlogged, "connections refused (at most one line a second)");
        g.last = Some(now);
        g.unlogged = 0;
    }

    /// Logs a failed handshake like a refusal, at most once a second: a
    /// peer without the key can fail as many as it can open.
    pub fn handshake_failed(&self, peer: Peer, error: &anyhow::Error) {
        let mut g = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        g.unlogged += 1;
        let now = Instant::now();
        if g.last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return;
        }
        tracing::warn!(listener = self.name, %peer, error = format!("{error:#}"), failed = g.unlogged, "handshake failed (at most one line a second)");
        g.last = Some(now);
        g.unlogged = 0;
    }

    fn release(&self, peer: Peer, authenticated: bool) {
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.total -= 1;
        if !authenticated {
            c.unauthenticated -= 1;
        }
        let gone = match c.peers.get_mut(&peer) {
            Some(p) => {
                p.0 -= 1;
                if !authenticated {
                    p.1 -= 1;
                }
                p.0 == 0
            }
            None => false,
        };
        if gone {
            c.peers.remove(&peer);
        }
    }

    /// Connections held now, and of them unauthenticated (for tests).
    pub fn held(&self) -> (usize, usize) {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        (c.total, c.unauthenticated)
    }
}

impl Permit {
    /// The limits of the gate that gave it.
    pub fn limits(&self) -> Limits {
        self.gate.limits
    }

    /// Logs the connection's failed handshake (rate-limited).
    pub fn handshake_failed(&self, error: &anyhow::Error) {
        self.gate.handshake_failed(self.peer, error);
    }

    /// The handshake passed: the connection no longer counts against the
    /// unauthenticated limits.
    pub fn authenticated(&mut self) {
        if self.authenticated {
            return;
        }
        self.authenticated = true;
        let mut c = self.gate.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.unauthenticated -= 1;
        if let Some(p) = c.peers.get_mut(&self.peer) {
            p.1 -= 1;
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release(self.peer, self.authenticated);
    }
}

/// A stream whose per-call timeouts can be set.
pub trait Timeouts {
    /// Sets the read and write timeouts.
    fn set_timeouts(&self, t: Option<Duration>) -> std::io::Result<()>;
}

impl Timeouts for TcpStream {
    fn set_timeouts(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
}

impl Timeouts for UnixStream {
    fn set_timeouts(&self, t: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(t)?;
        self.set_write_timeout(t)
    }
}

/// A stream that fails with `TimedOut` once `until` has passed: each read
/// or write may take only the time left.
pub struct Deadline<'a, S: Timeouts> {
    s: &'a mut S,
    until: Instant,
}

impl<'a, S: Timeouts> Deadline<'a, S> {
    /// `s` until `after` from now.
    pub fn new(s: &'a mut S, after: Duration) -> Deadline<'a, S> {
        Deadline { s, until: Instant::now() + after }
    }

    fn arm(&self) -> std::io::Result<()> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake deadline passed"));
        }
        self.s.set_timeouts(Some(left))
    }
}

impl<S: Timeouts + Read> Read for Deadline<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.s.read(buf)
    }
}

impl<S: Timeouts + Write> Write for Deadline<'_, S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.arm()?;
        self.s.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.s.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u8) -> Peer {
        Peer::Ip(IpAddr::from([10, 0, 0, n]))
    }

    #[test]
    fn limits_hold_per_peer_and_in_total_and_places_come_back() {
        let g =
            Gate::new("test", Limits { total: 5, per_peer: 3, unauthenticated: 4, unauthenticated_per_peer: 2, handshake: Duration::ZERO });
        let mut a1 = g.admit(ip(1)).unwrap();
        let _a2 = g.admit(ip(1)).unwrap();
        assert_eq!(g.admit(ip(1)).err(), Some(Refusal::UnauthenticatedPerPeer));
        a1.authenticated();
        let a3 = g.admit(ip(1)).unwrap();
        assert_eq!(g.admit(ip(1)).err(), Some(Refusal::PerPeer));
        let _b1 = g.admit(ip(2)).unwrap();
        let _b2 = g.admit(ip(2)).unwrap();
        assert_eq!(g.held(), (5, 4));
        assert_eq!(g.admit(ip(3)).err(), Some(Refusal::Total));
        drop(a1);
        assert_eq!(g.admit(ip(3)).err(), Some(Refusal::Unauthenticated));
        drop(a3);
        let c = g.admit(ip(3)).unwrap();
        drop(c);
        drop(_b1);
        drop(_b2);
        drop(_a2);
        assert_eq!(g.held(), (0, 0));
        assert!(g.counts.lock().unwrap().peers.is_empty());
    }

    #[test]
    fn a_trickling_peer_is_cut_off_at_the_deadline() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || {
            // A byte every 100 ms: each read alone is quick.
            for _ in 0..30 {
                if (&b).write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let t0 = Instant::now();
        let mut d = Deadline::new(&mut a, Duration::from_millis(500));
        let mut buf = [0u8; 64];
        let e = d.read_exact(&mut buf).unwrap_err();
        assert!(matches!(e.kind(), std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock), "{e:?}");
        assert!(t0.elapsed() < Duration::from_secs(2), "cut off after {:?}", t0.elapsed());
        drop(a);
        t.join().unwrap();
    }
}
