//! /proc of nested pid namespaces across checkpoint and restore, on the
//! real kernel (run as root, needs `unshare` from util-linux).
//!
//! A partition's init is the first process of its pid namespace and owns
//! a mount namespace; a program inside it that runs
//! `unshare --fork --pid --mount-proc` puts the procfs of a pid namespace
//! nested one level down on top of /proc, and every process of that mount
//! namespace, the init included, sees that one. The restore must mount
//! each restored mount namespace's /proc from a process of the pid
//! namespace it showed, at every depth; a procfs whose pid namespace has
//! no process left to mount it is refused by name.
//!
//! Every process a test starts is killed and reaped when it ends, also on
//! failure, and its image directory removed.

mod common;
use common::wait_for;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lpm_engine::{DumpOptions, RestoreOptions};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A test's image directory and the trees it started; on drop every one
/// is killed and reaped and the directory removed.
struct Scene {
    dir: PathBuf,
    pids: Vec<i32>,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        let name = format!("lpm-procns-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(name);
        fs::create_dir_all(&dir).unwrap();
        Scene { dir, pids: Vec::new() }
    }

    /// Starts `unshare ARGS...` as our child; its pid.
    fn unshare(&mut self, args: &[&str]) -> i32 {
        // Reaped by pid in Drop: a checkpoint kills its tree, and the
        // restored tree is our child under another pid.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("unshare")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run unshare (util-linux)");
        let pid = child.id() as i32;
        self.pids.push(pid);
        pid
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // Killing the first process of a pid namespace kills all of it.
        let deadline = Instant::now() + Duration::from_secs(5);
        common::kill_and_reap(&self.pids, deadline);
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// The only child of `pid`, if it has exactly one.
fn only_child(pid: i32) -> Option<i32> {
    let kids: Vec<i32> =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (kids.len() == 1).then(|| kids[0])
}

fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_string()
}

/// Inode of the pid namespace `pid` is in.
fn pid_ns(pid: i32) -> u64 {
    fs::metadata(format!("/proc/{pid}/ns/pid")).unwrap_or_else(|e| panic!("ns/pid of {pid}: {e}")).ino()
}

/// What the /proc of `pid`'s mount namespace shows, looked at through its
/// root: the inode of that procfs's pid namespace (its pid 1's), and the
/// name of its pid 1.
fn proc_shows(pid: i32) -> (u64, String) {
    let base = format!("/proc/{pid}/root/proc/1");
    let ino = fs::metadata(format!("{base}/ns/pid")).unwrap_or_else(|e| panic!("{base}/ns/pid: {e}")).ino();
    (ino, fs::read_to_string(format!("{base}/comm")).unwrap_or_default().trim().to_string())
}

/// The chain root → child → grandchild, once all three exist.
fn chain(root: i32) -> [i32; 3] {
    let inner = only_child(root).unwrap_or_else(|| panic!("{root} has not exactly one child"));
    let leaf = only_child(inner).unwrap_or_else(|| panic!("{inner} has not exactly one child"));
    [root, inner, leaf]
}

/// Checks the partition shape at two depths: the root (pid 1 of its pid
/// namespace, owning a mount namespace) sees the procfs of the pid
/// namespace its child founded; the child (an `unshare` again, owning the
/// next mount namespace) and the leaf see the procfs of the leaf's.
fn check_shape(when: &str, [root, inner, leaf]: [i32; 3]) {
    assert_eq!(comm(leaf), "sleep", "{when}: the leaf");
    assert_ne!(pid_ns(root), pid_ns(inner), "{when}: the child is in the root's pid namespace");
    assert_ne!(pid_ns(inner), pid_ns(leaf), "{when}: the leaf is in the child's pid namespace");
    assert_eq!(proc_shows(root), (pid_ns(inner), "unshare".to_string()), "{when}: /proc of the root's mount namespace");
    assert_eq!(proc_shows(inner), (pid_ns(leaf), "sleep".to_string()), "{when}: /proc of the child's mount namespace");
    assert_eq!(proc_shows(leaf), (pid_ns(leaf), "sleep".to_string()), "{when}: /proc of the leaf");
}

/// The tree is the partition's init running `ns_tree` one level deeper:
/// checkpointed and restored, each mount namespace again shows the procfs
/// of the pid namespace it showed, not the one of its owner.
#[test]
fn nested_pid_namespaces_keep_their_proc() {
    let mut s = Scene::new("nested");
    // outer (our pid namespace) -> root: pid 1 of P, owns mount ns M1
    // -> inner: pid 1 of Q, mounted Q's procfs on M1's /proc, owns M2
    // -> leaf: pid 1 of R, mounted R's procfs on M2's /proc.
    let outer = s.unshare(&[
        "--fork",
        "--pid",
        "--mount-proc",
        "--kill-child",
        "sh",
        "-c",
        "exec unshare --fork --pid --mount-proc sh -c 'exec unshare --fork --pid --mount-proc sleep 1000'",
    ]);
    let mut tree = None;
    wait_for("the three levels to start", 20, || {
        tree = only_child(outer)
            .and_then(only_child)
            .and_then(only_child)
            .filter(|&l| comm(l) == "sleep")
            .map(|_| chain(only_child(outer).unwrap()));
        tree.is_some()
    });
    let before = tree.unwrap();
    check_shape("before the checkpoint", before);

    let img = s.dir.join("img");
    lpm_engine::checkpoint_with(before[0], &img, &DumpOptions::default()).expect("checkpoint");
    wait_for("the checkpointed tree to be gone", 5, || gone(before[0]));
    let r = lpm_engine::restore(&img, &RestoreOptions::default()).expect("restore");
    s.pids.push(r.root_pid);
    assert_eq!(r.processes, 3);
    let after = chain(r.root_pid);
    check_shape("after the restore", after);

    let procs = lpm_image::read_tree(&img).unwrap().processes;
    // The leaf mounts its own; nobody in the root's mount namespace is in
    // the child's pid namespace any more, so the child makes that procfs
    // and the root attaches it.
    let mounters: Vec<u32> = procs.iter().filter(|p| p.namespaces.as_ref().is_some_and(|n| n.mount_proc)).map(|p| p.pid).collect();
    assert_eq!(mounters, vec![before[2] as u32], "the processes marked to mount /proc");
    let from: Vec<(u32, u32)> =
        procs.iter().filter_map(|p| p.namespaces.as_ref().filter(|n| n.proc_from != 0).map(|n| (p.pid, n.proc_from))).collect();
    assert_eq!(from, vec![(before[0] as u32, before[1] as u32)], "the owners attaching a procfs made elsewhere");
}

/// A mount namespace whose /proc shows a pid namespace that has ended (its
/// only process mounted it and exited) cannot get that /proc back: the
/// checkpoint refuses it by name and the tree runs on.
#[test]
fn proc_of_an_ended_pid_namespace_is_refused() {
    let mut s = Scene::new("ended");
    let ready = s.dir.join("ready");
    let script = format!("unshare --fork --pid sh -c 'mount -t proc proc /proc' && touch {} && exec sleep 1000", ready.display());
    let root = s.unshare(&["--mount", "--propagation", "private", "sh", "-c", &script]);
    wait_for("the procfs to be mounted", 20, || ready.exists() && comm(root) == "sleep");
    let err =
        lpm_engine::checkpoint_with(root, &s.dir.join("img"), &DumpOptions::default()).expect_err("a procfs without its pid namespace");
    let text = err.to_string();
    assert!(text.contains("unsupported mount") && text.contains("pid namespace that has ended"), "{text}");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(comm(root), "sleep", "the refused tree is gone");
    assert_eq!(
        fs::read_to_string(format!("/proc/{root}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("TracerPid"))
            .map(|l| l.split_whitespace().nth(1) == Some("0")),
        Some(true),
        "the refused tree is still traced"
    );
}
