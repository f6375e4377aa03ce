//! A mover peer made by hand, for the tests that play one: mutual TLS
//! with a certificate of the test's choosing, from a host's network
//! namespace, then the Hello claiming a name of the test's choosing.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use lpm_host::lab::Lab;
use lpm_trust::mover::{Opener, Sealer};
use lpm_trust::{Identity, Issued, Pki, Role};

/// The identity whose files are `issued`, trusting the lab's CA.
pub fn identity(lab: &Lab, issued: &Issued) -> Identity {
    Identity::load(&lab.pki().unwrap().ca_cert(), issued).unwrap()
}

/// Host `name`'s identity in the lab's PKI.
pub fn host_identity(lab: &Lab, name: &str) -> Identity {
    let pki: Pki = lab.pki().unwrap();
    identity(lab, &pki.paths(Role::Host, name))
}

/// A TCP connection from host `from`'s namespace to host `to`'s mover.
pub fn tcp(lab: &Lab, from: &str, to: &str) -> TcpStream {
    let addr: SocketAddr = lab.host(to).unwrap().listen.into();
    let ns = lab.netns_of(from).unwrap().fd().unwrap();
    let s = lpm_sys::net::in_netns(ns.as_fd(), || TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
        .unwrap()
        .unwrap_or_else(|e| panic!("reach {to}'s mover from {from}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

struct Duplex<'a>(&'a mut Opener, &'a mut Sealer);

impl Read for Duplex<'_> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}

impl Write for Duplex<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.1.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.1.flush()
    }
}

/// From host `from`, to host `to`'s mover, with `id`, claiming to be
/// `claim`: the halves once the target answered the Hello, or what
/// refused (the TLS handshake's error, or the target's word).
pub fn dial(lab: &Lab, from: &str, to: &str, id: &Identity, claim: &str) -> Result<(Sealer, Opener), String> {
    let mut s = tcp(lab, from, to);
    let cfg = lpm_trust::mover::mover_client_config(id).unwrap();
    let est = lpm_trust::mover::connect(&mut s, cfg, to).map_err(|e| format!("handshake: {e}"))?;
    let (mut tx, mut rx) = est.split(&s).unwrap();
    lpm_wire::hello(&mut Duplex(&mut rx, &mut tx), lpm_wire::Role::Opener, claim, |_| Ok(())).map_err(|e| format!("hello: {e}"))?;
    Ok((tx, rx))
}
