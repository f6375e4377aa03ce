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
