use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;

use super::*;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("lpm-trust-{tag}-{}-{:x}", std::process::id(), rand_u64()));
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn identity(pki: &Pki, role: Role, name: &str) -> Identity {
    Identity::load(&pki.ca_cert(), &pki.enroll(role, name).unwrap()).unwrap()
}

/// A TLS connection between `server` and `client` (the client expecting
/// host `expect`) over a socket pair; the server then checks that the
/// client is `claimed` of `role`. What each side saw: Ok with the byte
/// the other sent, or the error.
fn connect(
    server: &Identity,
    client: &Identity,
    expect: &str,
    role: Role,
    claimed: &str,
) -> (std::result::Result<u8, String>, std::result::Result<u8, String>) {
    let (a, b) = UnixStream::pair().unwrap();
    let sc = server_config(server).unwrap();
    let cc = client_config(client).unwrap();
    let name = host_server_name(expect).unwrap();
    let claimed = claimed.to_string();
    let srv = std::thread::spawn(move || -> std::result::Result<u8, String> {
        let conn = rustls::ServerConnection::new(sc).map_err(|e| e.to_string())?;
        let mut s = rustls::StreamOwned::new(conn, a);
        let mut b = [0u8];
        // The first read drives the handshake.
        s.read_exact(&mut b).map_err(|e| e.to_string())?;
        check_peer(s.conn.peer_certificates(), role, &claimed).map_err(|e| e.to_string())?;
        s.write_all(b"s").map_err(|e| e.to_string())?;
        s.flush().map_err(|e| e.to_string())?;
        Ok(b[0])
    });
    let cli = (|| -> std::result::Result<u8, String> {
        let conn = rustls::ClientConnection::new(cc, name).map_err(|e| e.to_string())?;
        let mut s = rustls::StreamOwned::new(conn, b);
        s.write_all(b"c").map_err(|e| e.to_string())?;
        s.flush().map_err(|e| e.to_string())?;
        let mut b = [0u8];
        s.read_exact(&mut b).map_err(|e| e.to_string())?;
        Ok(b[0])
    })();
    (srv.join().unwrap(), cli)
}

#[test]
fn hosts_of_one_site_meet_and_know_each_other() {
    let d = Dir::new("meet");
    let pki = Pki::init(&d.0).unwrap();
    let (h1, h2) = (identity(&pki, Role::Host, "h1"), identity(&pki, Role::Host, "h2"));
    let (s, c) = connect(&h1, &h2, "h1", Role::Host, "h2");
    assert_eq!((s, c), (Ok(b'c'), Ok(b's')));
    let op = identity(&pki, Role::Operator, "ann");
    let (s, c) = connect(&h1, &op, "h1", Role::Operator, "ann");
    assert_eq!((s, c), (Ok(b'c'), Ok(b's')));
}

#[test]
fn a_certificate_of_another_site_is_refused_both_ways() {
    let (d1, d2) = (Dir::new("site1"), Dir::new("site2"));
    let (a, b) = (Pki::init(&d1.0).unwrap(), Pki::init(&d2.0).unwrap());
    let h1 = identity(&a, Role::Host, "h1");
    let intruder = identity(&b, Role::Host, "h2");
    // Each side refuses the other's CA in the handshake, whichever dials
    // (which alert a side reads first, its own refusal or the other's, is
    // a race); no byte passes.
    let refused = |r: std::result::Result<u8, String>| {
        let e = r.unwrap_err();
        assert!(e.contains("UnknownIssuer") || e.contains("UnknownCA"), "{e}");
    };
    let (s, c) = connect(&h1, &intruder, "h1", Role::Host, "h2");
    refused(s);
    refused(c);
    let (s, c) = connect(&intruder, &h1, "h2", Role::Host, "h1");
    refused(s);
    refused(c);
}

#[test]
fn an_expired_certificate_is_refused() {
    let d = Dir::new("expired");
    let pki = Pki::init(&d.0).unwrap();
    let h1 = identity(&pki, Role::Host, "h1");
    let now = OffsetDateTime::now_utc();
    let old = pki.issue(Role::Host, "h2", now - time::Duration::days(30), now - time::Duration::days(1)).unwrap();
    let h2 = Identity::load(&pki.ca_cert(), &old).unwrap();
    let (s, _) = connect(&h1, &h2, "h1", Role::Host, "h2");
    let e = s.unwrap_err();
    assert!(e.contains("Expired") || e.contains("expired"), "{e}");
}

#[test]
fn a_peer_is_refused_when_its_certificate_names_another() {
    let d = Dir::new("names");
    let pki = Pki::init(&d.0).unwrap();
    let (h1, h2) = (identity(&pki, Role::Host, "h1"), identity(&pki, Role::Host, "h2"));
    // h2 claims to be h3.
    let (s, _) = connect(&h1, &h2, "h1", Role::Host, "h3");
    assert!(s.unwrap_err().contains("h3.hosts.lpm"));
    // The client dials h3 and meets h1.
    let (_, c) = connect(&h1, &h2, "h3", Role::Host, "h2");
    let e = c.unwrap_err();
    assert!(e.contains("NotValidForName") || e.to_lowercase().contains("name"), "{e}");
    // An operator's certificate does not pass for a host's.
    let op = identity(&pki, Role::Operator, "h2");
    let (s, _) = connect(&h1, &op, "h1", Role::Host, "h2");
    assert!(s.unwrap_err().contains("h2.hosts.lpm"));
}

#[test]
fn keys_are_private_and_refused_when_open() {
    let d = Dir::new("modes");
    let pki = Pki::init(&d.0).unwrap();
    let issued = pki.enroll(Role::Host, "h1").unwrap();
    use std::os::unix::fs::MetadataExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&d.0), 0o700);
    assert_eq!(mode(&d.0.join("ca.key")), 0o600);
    assert_eq!(mode(&d.0.join("hosts")), 0o700);
    assert_eq!(mode(&issued.key), 0o600);
    std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = Identity::load(&pki.ca_cert(), &issued).err().expect("an open key is refused").to_string();
    assert!(e.contains("h1.key") && e.contains("0640"), "{e}");
    std::fs::set_permissions(d.0.join("ca.key"), std::fs::Permissions::from_mode(0o604)).unwrap();
    let e = pki.enroll(Role::Host, "h2").unwrap_err().to_string();
    assert!(e.contains("ca.key") && e.contains("0604"), "{e}");
}

#[test]
fn init_refuses_an_existing_site_and_names_are_checked() {
    let d = Dir::new("again");
    Pki::init(&d.0).unwrap();
    assert!(matches!(Pki::init(&d.0), Err(TrustError::Exists(_))));
    let pki = Pki::open(&d.0).unwrap();
    for bad in ["", "-h1", "h1-", "h 1", "h1.example", &"x".repeat(64)] {
        assert!(matches!(pki.enroll(Role::Host, bad), Err(TrustError::BadName { .. })), "{bad:?} accepted");
    }
    let missing = Dir::new("none");
    assert!(Pki::open(&missing.0).unwrap_err().to_string().contains("lpm pki init"));
}

#[test]
fn peer_name_reads_the_role_and_name_a_certificate_is_for() {
    let d = Dir::new("peer-name");
    let pki = Pki::init(&d.0).unwrap();
    let certs = |role, name| read_certs(&pki.enroll(role, name).unwrap().cert).unwrap();
    let op = certs(Role::Operator, "ann");
    assert_eq!(peer_name(Some(&op), Role::Operator).unwrap(), "ann");
    let e = peer_name(Some(&op), Role::Host).unwrap_err().to_string();
    assert!(e.contains("ann.operators.lpm"), "{e}");
    let host = certs(Role::Host, "h1");
    assert_eq!(peer_name(Some(&host), Role::Host).unwrap(), "h1");
    assert!(peer_name(Some(&host), Role::Operator).is_err());
    assert!(peer_name(None, Role::Operator).is_err());
}
