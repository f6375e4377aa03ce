//! What the integration tests share: a scene that owns a scratch
//! directory and every process tree a test starts or restores, and kills
//! and removes them however the test ends.
// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub mod hugepages;
pub mod lab;
pub mod mover;
pub mod pg;
pub mod zdtm_progs;

/// The lpm binary under test.
pub const LPM: &str = env!("CARGO_BIN_EXE_lpm");

/// A per-test scratch directory and the trees to kill when the test ends,
/// however it ends.
pub struct Scene {
    /// The scratch directory.
    pub dir: PathBuf,
    /// Roots of the trees to kill.
    pub pids: Vec<i32>,
}

impl Scene {
    /// A new scene; `tag` names the test in the directory name.
    pub fn new(tag: &str) -> Scene {
        // SAFETY: prctl with integer arguments; orphans of restored trees
        // come to this test process, which reaps them.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("lpm-test-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Scene { dir, pids: Vec::new() }
    }

    /// A path inside the scene's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Compiles a C program into the scene's directory.
    pub fn cc(&self, name: &str, src: &str) -> PathBuf {
        let c = self.path(&format!("{name}.c"));
        std::fs::write(&c, src).unwrap();
        let bin = self.path(name);
        let st = Command::new("gcc").args(["-O1", "-pthread", "-o"]).arg(&bin).arg(&c).arg("-lm").status().expect("gcc");
        assert!(st.success(), "gcc failed for {name}");
        bin
    }

    /// Starts a program (stdio to /dev/null) and keeps its pid to kill.
    pub fn spawn(&mut self, cmd: &mut Command) -> i32 {
        let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn");
        let pid = child.id() as i32;
        std::mem::forget(child);
        self.pids.push(pid);
        pid
    }

    /// `lpm checkpoint`; in kill mode, waits until the tree's pids are free.
    pub fn checkpoint(&self, pid: i32, images: &Path, leave_running: bool) {
        let tree = tree_of(pid);
        let mut c = Command::new(LPM);
        c.args(["checkpoint", "--pid", &pid.to_string(), "--images"]).arg(images);
        if leave_running {
            c.arg("--leave-running");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "checkpoint failed: {}", String::from_utf8_lossy(&out.stderr));
        if !leave_running {
            // The tree may have forked between the listing and the
            // checkpoint: the image says which processes it killed. Each
            // one's zombie (an orphan's comes to this subreaper) must be
            // reaped, or it would hold its pid against the restore.
            let dumped = lpm_image::read_tree(images).map(|t| t.processes.iter().map(|p| p.host_pid as i32).collect::<Vec<_>>());
            for p in tree.into_iter().chain(dumped.unwrap_or_default()) {
                reap(p);
            }
        }
    }

    /// `lpm restore --detach`; returns the root pid, kept to kill.
    pub fn restore(&mut self, images: &Path) -> i32 {
        let out = Command::new(LPM).args(["restore", "--detach", "--verify", "--images"]).arg(images).output().unwrap();
        assert!(out.status.success(), "restore failed: {}", String::from_utf8_lossy(&out.stderr));
        let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("restore prints the root pid");
        self.pids.push(pid);
        pid
    }

    /// Kills the tree rooted at `pid` and waits until its pids are free.
    pub fn kill_tree(&self, pid: i32) {
        let tree = tree_of(pid);
        for &p in &tree {
            // SAFETY: killing processes this test started or restored.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        for p in tree {
            reap(p);
        }
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        let all: Vec<i32> = self.pids.iter().flat_map(|&p| tree_of(p)).collect();
        for p in all {
            // SAFETY: killing processes this test started or restored, and
            // their children.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
        // SAFETY: reaping whatever children and orphans are left.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The pids of the tree rooted at `pid` (none if it is gone).
pub fn tree_of(pid: i32) -> Vec<i32> {
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Vec::new();
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        for t in std::fs::read_dir(format!("/proc/{p}/task")).into_iter().flatten().flatten() {
            let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(kids.split_whitespace().filter_map(|w| w.parse::<i32>().ok()));
        }
        i += 1;
    }
    out
}

/// Waits for a killed child (or orphan) to be gone, so its pid is free.
pub fn reap(pid: i32) {
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        // SAFETY: waitpid on our own child or adopted orphan.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        assert!(t.elapsed() < Duration::from_secs(10), "pid {pid} did not go away");
        std::thread::sleep(Duration::from_millis(10));
    }
}
