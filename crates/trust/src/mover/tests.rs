use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use super::*;
use crate::{Pki, Role};

struct Dir(std::path::PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        Dir(std::env::temp_dir().join(format!("lpm-mover-tls-{tag}-{}-{:x}", std::process::id(), crate::rand_u64())))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn identity(pki: &Pki, name: &str) -> Identity {
    Identity::load(&pki.ca_cert(), &pki.enroll(Role::Host, name).unwrap()).unwrap()
}

/// A connected TCP pair on loopback: (client's end, server's end).
fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (s, _) = l.accept().unwrap();
    for x in [&c, &s] {
        x.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    }
    (c, s)
}

/// Both handshakes on a fresh pair: what each side got.
fn handshake(server: &Identity, client: &Identity, expect: &str) -> (TcpStream, Result<Established>, TcpStream, Result<Established>) {
    let (mut c, mut s) = pair();
    let sc = mover_server_config(server).unwrap();
    let cc = mover_client_config(client).unwrap();
    let srv = std::thread::spawn(move || {
        let r = accept(&mut s, sc);
        (s, r)
    });
    let cr = connect(&mut c, cc, expect);
    let (s, sr) = srv.join().unwrap();
    (c, cr, s, sr)
}

fn data(n: usize) -> Vec<u8> {
    (0..n as u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect()
}

/// The halves carry data both ways, in writes of every size (one byte,
/// records' worth, vectored), and the server's certificate named the
/// host the client meant.
#[test]
fn the_halves_carry_data_both_ways() {
    let d = Dir::new("halves");
    let pki = Pki::init(&d.0).unwrap();
    let (h1, h2) = (identity(&pki, "h1"), identity(&pki, "h2"));
    let (c, cr, s, sr) = handshake(&h2, &h1, "h2");
    let (cr, sr) = (cr.unwrap(), sr.unwrap());
    crate::check_peer(Some(sr.peer_certificates()), Role::Host, "h1").unwrap();
    assert!(crate::check_peer(Some(sr.peer_certificates()), Role::Host, "h3").is_err());
    let (mut stx, mut srx) = sr.split(&s).unwrap();
    let (mut ctx, mut crx) = cr.split(&c).unwrap();
    let big = data(3 << 20);
    let sent = big.clone();
    let t = std::thread::spawn(move || {
        // The server speaks first.
        stx.write_all(b"ready").unwrap();
        stx.flush().unwrap();
        let mut got = vec![0u8; sent.len() + 1];
        srx.read_exact(&mut got).unwrap();
        assert_eq!(got[0], b'x');
        assert!(got[1..] == sent[..], "the server got other bytes than were sent");
        stx.write_all(&sent[..100_000]).unwrap();
        stx.flush().unwrap();
        drop(stx);
        // The client's end: EOF at a record boundary.
        let mut rest = Vec::new();
        srx.read_to_end(&mut rest).unwrap();
        rest
    });
    let mut b = [0u8; 5];
    crx.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ready");
    ctx.write_all(b"x").unwrap();
    let (head, tail) = big.split_at(40_000);
    // One vectored write takes a batch of records (less the byte
    // staged); the rest goes on.
    let took = ctx.write_vectored(&[IoSlice::new(head), IoSlice::new(tail)]).unwrap();
    assert_eq!(took, BATCH * MAX_FRAGMENT - 1);
    ctx.write_all(&big[took..]).unwrap();
    ctx.flush().unwrap();
    let mut back = vec![0u8; 100_000];
    crx.read_exact(&mut back).unwrap();
    assert!(back == big[..100_000]);
    ctx.socket().shutdown(std::net::Shutdown::Write).unwrap();
    assert!(t.join().unwrap().is_empty());
}

/// What the halves send is standard TLS 1.3: rustls itself, on the
/// other end, reads it and is read.
#[test]
fn rustls_reads_what_the_halves_write_and_the_other_way() {
    let d = Dir::new("interop");
    let pki = Pki::init(&d.0).unwrap();
    let (h1, h2) = (identity(&pki, "h1"), identity(&pki, "h2"));
    let (c, mut s) = pair();
    let sc = mover_server_config(&h2).unwrap();
    let srv = std::thread::spawn(move || {
        let est = accept(&mut s, sc).unwrap();
        let (mut tx, mut rx) = est.split(&s).unwrap();
        tx.write_all(&data(70_000)).unwrap();
        tx.flush().unwrap();
        let mut got = vec![0u8; 50_000];
        rx.read_exact(&mut got).unwrap();
        got
    });
    let conn = rustls::ClientConnection::new(mover_client_config(&h1).unwrap(), host_server_name("h2").unwrap()).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, c);
    let mut ready = [0u8; READY.len()];
    tls.read_exact(&mut ready).unwrap();
    assert_eq!(ready, READY);
    let mut got = vec![0u8; 70_000];
    tls.read_exact(&mut got).unwrap();
    assert!(got == data(70_000));
    tls.write_all(&data(50_000)).unwrap();
    tls.flush().unwrap();
    assert!(srv.join().unwrap() == data(50_000));
}

/// A byte changed on the way fails the record's tag: the reader stops
/// there with an error, while the same bytes unchanged read back.
#[test]
fn an_altered_record_is_refused() {
    let d = Dir::new("tamper");
    let pki = Pki::init(&d.0).unwrap();
    let (h1, h2) = (identity(&pki, "h1"), identity(&pki, "h2"));
    for flip in [false, true] {
        let (c, cr, mut s, sr) = handshake(&h2, &h1, "h2");
        let (mut tx, _rx) = cr.unwrap().split(&c).unwrap();
        tx.write_all(b"the partition's memory").unwrap();
        tx.flush().unwrap();
        let mut wire = vec![0u8; HEADER + 22 + 1 + 16];
        s.read_exact(&mut wire).unwrap();
        assert!(!wire.windows(9).any(|w| w == b"partition"), "plaintext on the wire");
        if flip {
            wire[HEADER + 3] ^= 1;
        }
        // Fed to the server's reader through another socket.
        let (mut feed, y) = pair();
        let (_stx, mut rx) = sr.unwrap().split(&y).unwrap();
        feed.write_all(&wire).unwrap();
        let mut got = [0u8; 22];
        let r = rx.read_exact(&mut got);
        if flip {
            let e = r.unwrap_err();
            assert!(e.to_string().contains("fails its authentication"), "{e}");
        } else {
            r.unwrap();
            assert_eq!(&got, b"the partition's memory");
        }
    }
}

/// A client whose certificate is from another CA, or expired, fails the
/// handshake on both ends; a server whose certificate is not for the
/// host the client means is refused by the client.
#[test]
fn foreign_expired_and_misnamed_peers_fail_the_handshake() {
    let d = Dir::new("refuse");
    let pki = Pki::init(&d.0.join("site")).unwrap();
    let other = Pki::init(&d.0.join("other")).unwrap();
    let h2 = identity(&pki, "h2");
    // An attacker's client trusts whatever it likes: the site's CA here,
    // so that the refusal is the server's.
    let foreign = Identity::load(&pki.ca_cert(), &other.enroll(Role::Host, "h1").unwrap()).unwrap();
    let now = time::OffsetDateTime::now_utc();
    let old = pki.issue(Role::Host, "h1", now - time::Duration::days(30), now - time::Duration::days(1)).unwrap();
    let expired = Identity::load(&pki.ca_cert(), &old).unwrap();
    for (what, client) in [("foreign", &foreign), ("expired", &expired)] {
        let (_c, cr, _s, sr) = handshake(&h2, client, "h2");
        let se = sr.unwrap_err().to_string();
        assert!(cr.is_err(), "{what}: the client went on");
        assert!(se.contains("TLS handshake"), "{what}: {se}");
        let want = if what == "foreign" { "UnknownIssuer" } else { "certificate expired" };
        assert!(se.contains(want), "{what}: {se}");
    }
    let h1 = identity(&pki, "h1");
    let (_c, cr, _s, sr) = handshake(&h2, &h1, "h3");
    let ce = cr.unwrap_err().to_string();
    assert!(ce.contains("not valid for name \"h3.hosts.lpm\""), "{ce}");
    assert!(sr.is_err());
}
