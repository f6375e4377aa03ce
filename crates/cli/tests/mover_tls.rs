//! The mover over mutual TLS (issue 12, "Trust"), with real lpmd's in the
//! lab: a partition moves between two hosts and a capture of the mover
//! link holds no plaintext of what it keeps in memory (while the same
//! capture between insecure hosts does); a peer with a certificate of
//! another CA, an expired one, or one for another host than it claims is
//! refused before any frame of a migration is read; a host of one mode
//! refuses a peer of the other, saying so; and lpmd refuses to start with
//! neither a TLS identity nor `insecure`.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lpm_trust::{Identity, Pki, Role};

mod common;

use common::lab::{Moved, TestLab};
use common::mover::{dial, host_identity, identity, tcp};
use common::*;

/// A partition that keeps a marker of its own making (random, so that no
/// spec or argument carries it) 200 000 times in its memory, and says it
/// in its console log (which stays on shared storage).
const KEEPER: &str = r#"
import os, sys, time
m = b'lpm-marker-' + os.urandom(8).hex().encode() + b'.'
keep = bytearray(m * 200000)
print('marker ' + m.decode(), flush=True)
while True:
    time.sleep(1)
"#;

/// tcpdump on host `host`'s management link, writing `file`; returns
/// once it captures.
struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn start(lab: &TestLab, host: &str, file: std::path::PathBuf) -> Capture {
        let ns = lab.lab().host(host).unwrap().netns.clone();
        let port = lpm_host::lab::LPMD_PORT.to_string();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns, "tcpdump", "-i", lpm_host::lab::MGMT_IF, "-U", "-B", "65536", "-s", "0", "-w"])
            .arg(&file)
            .args(["tcp", "port", &port])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run tcpdump (scripts/setup.sh installs it)");
        // It says so on stderr once it captures.
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        err.read_line(&mut line).unwrap();
        assert!(line.contains("listening on"), "tcpdump: {line}");
        std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = err.read_to_string(&mut rest);
            eprintln!("tcpdump: {}", rest.trim());
        });
        Capture { child, file }
    }

    /// Stops the capture and returns what it holds.
    fn stop(mut self) -> Vec<u8> {
        // SIGINT: tcpdump writes out what it holds and exits.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGINT);
        let _ = self.child.wait();
        let bytes = std::fs::read(&self.file).unwrap();
        let _ = std::fs::remove_file(&self.file);
        bytes
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn count(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len()).filter(|w| *w == needle).count()
}

/// Moves a marker keeper from h1 to h2 under a capture of h2's mover
/// link: the capture's size and how often the marker is in it.
fn capture_a_migration(lab: &TestLab) -> (usize, usize) {
    let dir = lab.dir.to_string_lossy().into_owned();
    lab.ok(&["partition", "create", "keeper", "--host", "h1", "--memory", "256M", "--volume", &dir, "--", "python3", "-c", KEEPER]);
    lab.wait_log("keeper", "marker ", Duration::from_secs(60));
    let log = lab.logs("keeper");
    let marker = log.lines().find_map(|l| l.strip_prefix("marker ")).unwrap().trim().to_string();
    let cap = Capture::start(lab, "h2", lab.root.join("mover.pcap"));
    let moved = lab.migrate("keeper", "h2");
    let bytes = cap.stop();
    assert!(matches!(moved, Moved::Completed(_)), "the migration: {moved:?}\nh2:\n{}", lab.lpmd_log_tail("h2", 30));
    assert_eq!(lab.host_of("keeper"), "h2");
    // Its memory came along: the marker is still in it.
    assert!(lab.logs("keeper").contains(&marker));
    (bytes.len(), count(&bytes, marker.as_bytes()))
}

/// Over mutual TLS the marker never crosses in clear; the page stream
/// carried the partition's memory all the same (the capture is larger
/// than it).
#[test]
fn a_migration_over_mutual_tls_carries_no_plaintext() {
    let lab = TestLab::up("tls-capture", 2);
    let (size, found) = capture_a_migration(&lab);
    eprintln!("mutual TLS: {size} bytes captured, marker found {found} times");
    assert!(size > 2 << 20, "the capture holds only {size} bytes: not the page stream");
    assert_eq!(found, 0, "the marker crossed the mover link in clear");
}

/// The check that can fail: between insecure hosts the same capture
/// holds the marker; and a host of either mode refuses a peer of the
/// other, saying why.
#[test]
fn between_insecure_hosts_the_capture_holds_the_marker_and_modes_do_not_mix() {
    let lab = TestLab::up_insecure("plain-capture", 2);
    let (size, found) = capture_a_migration(&lab);
    eprintln!("insecure: {size} bytes captured, marker found {found} times");
    assert!(found > 100, "the marker is in the plain capture only {found} times");
    // A TLS peer meets a plain mover: it answers with a frame where a
    // TLS record was due (which lpmd's own client names as a plain
    // mover's refusal: link.rs's unit test).
    let l = lab.lab();
    let id = host_identity(&l, "h1");
    let e = dial(&l, "h1", "h2", &id, "h1").err().expect("a TLS peer passed a plain mover");
    assert!(e.contains("InvalidContentType"), "{e}");
    lab.wait_for_log("h2", "a TLS peer refused", Duration::from_secs(30));
}

/// A plain peer (the cluster key's handshake) meets a TLS mover: refused
/// with a word that says what the host wants.
#[test]
fn a_plain_peer_is_refused_by_a_tls_mover() {
    let lab = TestLab::up("tls-plainpeer", 2);
    let l = lab.lab();
    let key = lpm_agent::client::read_key(&l.key_path()).unwrap();
    let mut s = tcp(&l, "h1", "h2");
    let e = lpm_wire::handshake(&mut s, lpm_wire::Role::Opener, &key, "h1").unwrap_err();
    assert!(e.to_string().contains("requires mutual TLS"), "{e}");
    lab.wait_for_log("h2", "a plain (insecure) peer refused", Duration::from_secs(30));
}

/// Dials h2's mover as `claim` with `id` until h2's log says `logged`
/// (its failed handshakes are logged at most once a second, so one
/// refusal may fall in another's second): each dial must be refused,
/// with `said` in the refusal.
fn refused(lab: &TestLab, id: &Identity, claim: &str, said: &str, logged: &str) {
    let l = lab.lab();
    let t = Instant::now();
    loop {
        let before = lab.log_of("h2");
        let e = dial(&l, "h1", "h2", id, claim).err().unwrap_or_else(|| panic!("h2 accepted {claim} with {said:?} expected"));
        assert!(e.contains(said), "refused with {e:?}, not {said:?}");
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            let log = lab.log_of("h2");
            if log[before.len().min(log.len())..].contains(logged) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(t.elapsed() < Duration::from_secs(30), "h2 never logged {logged:?}:\n{}", lab.lpmd_log_tail("h2", 20));
    }
}

/// A certificate of another CA and an expired one fail the TLS handshake
/// (the alert says it: no frame was read), and one for h3 presented as
/// h2 is refused on its Hello, before any frame of a migration; each is
/// logged as a failed handshake, and h2's mover goes on serving the
/// hosts it should.
#[test]
fn foreign_expired_and_misnamed_certificates_are_refused_at_the_mover_port() {
    let lab = TestLab::up("tls-refuse", 2);
    let l = lab.lab();
    let pki = l.pki().unwrap();
    let other = Pki::init(&lab.root.join("other-site")).unwrap();
    // The attacker's client trusts the site's CA, so that the refusal is
    // h2's, not its own.
    let foreign = identity(&l, &other.enroll(Role::Host, "h1").unwrap());
    refused(&lab, &foreign, "h1", "alert", "UnknownIssuer");
    let now = time::OffsetDateTime::now_utc();
    let old = pki.issue(Role::Host, "h9", now - time::Duration::days(30), now - time::Duration::days(1)).unwrap();
    refused(&lab, &identity(&l, &old), "h9", "alert", "certificate expired");
    let h3 = identity(&l, &pki.enroll(Role::Host, "h3").unwrap());
    refused(&lab, &h3, "h2", "h2.hosts.lpm", "identity refused");
    // An operator's certificate is no host's.
    let op = identity(&l, &pki.paths(Role::Operator, lpm_host::lab::LAB_OPERATOR));
    refused(&lab, &op, lpm_host::lab::LAB_OPERATOR, "lab.hosts.lpm", "identity refused");
    // The host it should serve, it serves.
    let (_tx, _rx) = dial(&l, "h1", "h2", &host_identity(&l, "h1"), "h1").expect("h1 itself");
    assert!(lab.lpmd_pid("h2").is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists()));
}

/// lpmd with neither a TLS identity nor `insecure` refuses to start and
/// says what to configure.
#[test]
fn lpmd_without_an_identity_or_insecure_refuses_to_start() {
    let s = Scene::new("no-identity");
    let key = s.path("cluster.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    let dir = s.path("state");
    let out = Command::new(LPM)
        .args(["daemon", "--host", "hx", "--listen", "127.0.0.1:0", "--key"])
        .arg(&key)
        .arg("--dir")
        .arg(&dir)
        .arg("--control")
        .arg(s.path("lpmd.sock"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "lpmd started: {err}");
    for want in ["no TLS identity", "tls_ca, tls_cert and tls_key", "lpm host enroll hx", "insecure"] {
        assert!(err.contains(want), "{want:?} not in: {err}");
    }
    assert!(!dir.exists(), "lpmd touched its state directory before it refused");
}
