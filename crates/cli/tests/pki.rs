//! `lpm pki init`, `lpm pki operator` and `lpm host enroll` as an operator
//! runs them: the files they write, with which modes, and what they
//! refuse. (The certificates' use in TLS is tested in crates/trust.)

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

mod common;
use common::*;

fn lpm(args: &[&str]) -> (bool, String) {
    let out = Command::new(LPM).args(args).output().expect("run lpm");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn a_site_ca_issues_host_and_operator_certificates() {
    let s = Scene::new("pki");
    let dir = s.path("pki");
    let d = dir.to_str().unwrap();
    let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap_or_else(|e| panic!("{p}: {e}")).mode() & 0o777;

    let (ok, out) = lpm(&["host", "enroll", "h1", "--dir", d]);
    assert!(!ok && out.contains("lpm pki init"), "enroll before init: {out}");

    let (ok, out) = lpm(&["pki", "init", "--dir", d]);
    assert!(ok, "{out}");
    assert_eq!((mode(""), mode("ca.key")), (0o700, 0o600));
    let (ok, out) = lpm(&["pki", "init", "--dir", d]);
    assert!(!ok && out.contains("already there"), "a second init: {out}");

    let (ok, out) = lpm(&["host", "enroll", "h1", "--dir", d]);
    assert!(ok && out.contains("h1.hosts.lpm"), "{out}");
    assert_eq!((mode("hosts"), mode("hosts/h1.key")), (0o700, 0o600));
    let pem = std::fs::read_to_string(dir.join("hosts/h1.crt")).unwrap();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "the host's certificate and the CA's: {pem}");
    let (ok, out) = lpm(&["pki", "operator", "ann", "--dir", d]);
    assert!(ok && out.contains("ann.operators.lpm"), "{out}");
    assert_eq!(mode("operators/ann.key"), 0o600);

    let (ok, out) = lpm(&["host", "enroll", "h1.example", "--dir", d]);
    assert!(!ok && out.contains("h1.example"), "a dotted name: {out}");
    // A CA key others can read is refused, by name.
    std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, out) = lpm(&["host", "enroll", "h2", "--dir", d]);
    assert!(!ok && out.contains("ca.key") && out.contains("0644"), "an open CA key: {out}");
}
