//! A migration's target parks the restored tree ([`lpm_engine::Held::park`]):
//! complete, frozen in its cgroup, traced by nobody, so that it outlives
//! the agent that restored it, and runs only when [`lpm_engine::Parked::run`]
//! is called, also by another process that knows it only from a record.
//! Until it is parked, a restore whose tracer ends leaves nothing behind
//! (the puppets die with it: PTRACE_O_EXITKILL).
//!
//! Run as root on the real kernel (cgroup v2, ptrace, clone3).

mod common;
use common::wait_for;

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lpm_engine::{CheckpointOptions, Parked, RestoreOptions};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Counts into its log every few milliseconds.
const COUNTER: &str = r#"
import sys, time
n = 0
while True:
    n += 1
    with open(sys.argv[1], "a") as l:
        l.write(f"{n}\n")
    time.sleep(0.003)
"#;

/// A directory, a cgroup v2 and the program's pid; removed on drop.
struct Scene {
    dir: PathBuf,
    cg: PathBuf,
    pid: i32,
}

impl Scene {
    fn new() -> Scene {
        let name = format!("lpm-park-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let (cg, dir) = common::cgroup_and_dir(&name);
        Scene { dir, cg, pid: 0 }
    }

    fn log(&self) -> PathBuf {
        self.dir.join("log")
    }

    fn lines(&self) -> usize {
        fs::read_to_string(self.log()).unwrap_or_default().lines().count()
    }

    /// Starts the counter in the cgroup and checkpoints it (killed).
    fn checkpointed(&mut self) -> PathBuf {
        // Its stdout and stderr are its own: the harness's, shared with
        // the other tests, would move under the dump's re-check of its
        // file offsets.
        let child = Command::new("python3")
            .arg("-c")
            .arg(COUNTER)
            .arg(self.log())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.pid = child.id() as i32;
        fs::write(self.cg.join("cgroup.procs"), self.pid.to_string()).unwrap();
        wait_for("the counter to count", 10, || self.lines() > 3);
        let img = self.dir.join("img");
        lpm_engine::checkpoint(self.pid, &img, &CheckpointOptions::default()).expect("checkpoint the counter");
        let mut child = child;
        let _ = child.wait();
        img
    }

    fn frozen(&self) -> bool {
        fs::read_to_string(self.cg.join("cgroup.events")).unwrap().lines().any(|l| l == "frozen 1")
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let _ = fs::write(self.cg.join("cgroup.kill"), "1");
        let _ = fs::write(self.cg.join("cgroup.freeze"), "0");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && fs::read_to_string(self.cg.join("cgroup.procs")).map(|p| !p.trim().is_empty()).unwrap_or(false) {
            while lpm_sys::misc::reap_any().is_some() {}
            std::thread::sleep(Duration::from_millis(2));
        }
        while lpm_sys::misc::reap_any().is_some() {}
        let _ = fs::remove_dir(&self.cg);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.rsplit_once(") ").is_some_and(|(_, r)| !r.starts_with('Z')))
}

fn tracer(pid: i32) -> i32 {
    let st = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    st.lines().find_map(|l| l.strip_prefix("TracerPid:")).unwrap().trim().parse().unwrap()
}

#[test]
fn a_parked_tree_outlives_its_restorer_and_runs_when_told() {
    let mut s = Scene::new();
    let img = s.checkpointed();
    let (cg, dir) = (s.cg.clone(), img.clone());
    // Restored and parked by a thread that then ends: the tracer is gone.
    let parked = std::thread::spawn(move || {
        let held = lpm_engine::restore_held(&dir, &RestoreOptions { cgroups: vec![cg.clone()], ..Default::default() })?;
        held.park(&cg)
    })
    .join()
    .expect("restoring thread")
    .expect("restore and park");
    assert_eq!(parked.root_pid, s.pid);
    assert_eq!(parked.pids, vec![s.pid]);
    assert!(alive(s.pid), "the parked tree died with its restorer");
    assert_eq!(tracer(s.pid), 0, "the parked tree is still traced");
    assert!(s.frozen(), "the parked tree's cgroup is not frozen");
    let before = s.lines();
    // Known only from its record, as a restarted agent knows it.
    let again = Parked::from_parts(parked.root_pid, parked.pids.clone(), parked.cgroup.clone(), parked.connections.clone());
    again.run(&img).expect("run the parked tree");
    assert!(!s.frozen(), "the cgroup stayed frozen");
    wait_for("the parked tree to count on", 10, || s.lines() > before + 3);
    // Running it again changes nothing.
    again.run(&img).expect("run the parked tree a second time");
}

#[test]
fn a_restore_whose_tracer_ends_leaves_nothing() {
    let mut s = Scene::new();
    let img = s.checkpointed();
    let (cg, dir) = (s.cg.clone(), img.clone());
    let pid = std::thread::spawn(move || {
        let held = lpm_engine::restore_held(&dir, &RestoreOptions { cgroups: vec![cg], ..Default::default() }).expect("held restore");
        let pid = held.root_pid;
        // As if the agent died here: nothing of the restore's own cleanup
        // runs, only the kernel's.
        std::mem::forget(held);
        pid
    })
    .join()
    .expect("restoring thread");
    assert_eq!(pid, s.pid);
    wait_for("the held tree to die with its tracer", 10, || {
        while lpm_sys::misc::reap_any().is_some() {}
        !alive(pid)
    });
    let procs = fs::read_to_string(s.cg.join("cgroup.procs")).unwrap();
    assert!(procs.trim().is_empty(), "tasks left in the cgroup: {procs}");
}
