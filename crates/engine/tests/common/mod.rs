//! Helpers shared by the engine's integration tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Waits up to `secs` seconds for `ok`, failing the test naming `what`.
pub fn wait_for(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills the test's children `pids` and reaps them (and any other child
/// left), giving up at `deadline`: a test leaves no process behind.
pub fn kill_and_reap(pids: &[i32], deadline: Instant) {
    for &p in pids {
        lpm_sys::misc::kill(p, libc::SIGKILL);
    }
    for &p in pids {
        while Instant::now() < deadline && !lpm_sys::ptrace::try_reap(p) {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    while lpm_sys::misc::reap_any().is_some() {}
}

/// A fresh cgroup v2 directory `name` (a test's own freezer), and the
/// directory under /dev/shm of the same name for the test's files.
pub fn cgroup_and_dir(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::path::Path::new("/dev/shm").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let root = lpm_sys::probe::cgroup2_from_mountinfo(&mountinfo).expect("cgroup2 is not mounted: the cgroup v2 freezer is required");
    let cg = root.join(name);
    std::fs::create_dir(&cg).unwrap_or_else(|e| panic!("create cgroup {}: {e}", cg.display()));
    (cg, dir)
}
