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
    // `lpm-KIND-PID-N`: what earlier runs of this kind left is swept first.
    if let Some(kind) = name.rsplitn(3, '-').nth(2) {
        sweep_dead_scenes(&format!("{kind}-"));
    }
    let dir = std::path::Path::new("/dev/shm").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let cg = cgroup2().join(name);
    std::fs::create_dir(&cg).unwrap_or_else(|e| panic!("create cgroup {}: {e}", cg.display()));
    (cg, dir)
}

/// The cgroup v2 mount.
pub fn cgroup2() -> std::path::PathBuf {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    lpm_sys::probe::cgroup2_from_mountinfo(&mountinfo).expect("cgroup2 is not mounted: the cgroup v2 freezer is required")
}

/// Removes what scenes of test processes that died without dropping them
/// (SIGKILL, a runner's timeout) left: their cgroups, with whatever still
/// runs in them, and their directories under /dev/shm. Found by the pid
/// in the names (`PREFIX[TAG-]PID-N`, a cgroup maybe `...-cgM`); a pid
/// alive (or reused) keeps them.
pub fn sweep_dead_scenes(prefix: &str) {
    use std::path::Path;
    let dead = |name: &str| {
        let Some(rest) = name.strip_prefix(prefix) else { return false };
        let rest = rest.split("-cg").next().unwrap_or(rest);
        let mut parts = rest.rsplitn(3, '-');
        let (Some(_n), Some(pid)) = (parts.next(), parts.next()) else { return false };
        pid.parse::<u32>().is_ok_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
    };
    for e in std::fs::read_dir(cgroup2()).into_iter().flatten().flatten().filter(|e| dead(&e.file_name().to_string_lossy())) {
        let _ = std::fs::write(e.path().join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        // Removable once its last task is gone.
        while std::fs::remove_dir(e.path()).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    for e in std::fs::read_dir("/dev/shm").into_iter().flatten().flatten().filter(|e| dead(&e.file_name().to_string_lossy())) {
        let _ = std::fs::remove_dir_all(e.path());
    }
}
