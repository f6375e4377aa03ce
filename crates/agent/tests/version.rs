//! `lpmd --version` names the same version and commit as `lpm --version`.

#[test]
fn version_names_the_crate_version() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lpmd")).arg("--version").output().unwrap();
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(v.starts_with(&format!("lpmd {}", env!("CARGO_PKG_VERSION"))), "{v}");
    let head = std::process::Command::new("git").args(["rev-parse", "--short=9", "HEAD"]).current_dir(env!("CARGO_MANIFEST_DIR")).output();
    if let Some(h) = head.ok().filter(|h| h.status.success()) {
        let commit = String::from_utf8_lossy(&h.stdout).trim().to_string();
        assert!(v.trim_end().ends_with(&format!("({commit})")), "{v} (HEAD is {commit})");
    }
}
