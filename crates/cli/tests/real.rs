//! Real programs checkpointed and restored through the `lpm` binary, state
//! checked from outside; and bad input refused with the tree untouched.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn lines(p: &Path) -> Vec<u64> {
    std::fs::read_to_string(p).unwrap_or_default().lines().filter_map(|l| l.split_whitespace().next()?.parse().ok()).collect()
}

fn wait_lines(p: &Path, n: usize) {
    let t = Instant::now();
    while lines(p).len() < n {
        assert!(t.elapsed() < Duration::from_secs(20), "{} never reached {n} lines", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

const COUNTER: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    size_t len = 32 << 20;
    unsigned char *p = malloc(len);
    for (size_t i = 0; i < len; i++) p[i] = (unsigned char)(i * 7 + 3);
    FILE *f = fopen(argv[1], "a");
    setvbuf(f, 0, _IOLBF, 0);
    for (long n = 1;; n++) {
        unsigned long sum = 0;
        for (size_t i = 0; i < len; i += 4096) sum += p[i] == (unsigned char)(i * 7 + 3);
        fprintf(f, "%ld %s\n", n, sum == len / 4096 ? "ok" : "CORRUPT");
        usleep(20000);
    }
}
"#;

/// The log of a counter restored three times in a row (the restored tree
/// checkpointed again each time) is continuous and its memory intact.
#[test]
fn counter_survives_three_checkpoint_restore_cycles() {
    let mut s = Scene::new("counter");
    let bin = s.cc("counter", COUNTER);
    let log = s.path("log");
    let mut pid = s.spawn(Command::new(&bin).arg(&log));
    for round in 0..3 {
        wait_lines(&log, 5 * (round + 1));
        let images = s.path(&format!("img{round}"));
        s.checkpoint(pid, &images, false);
        let frozen = lines(&log).len();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(lines(&log).len(), frozen, "the program ran on after a checkpoint that kills");
        let restored = s.restore(&images);
        assert_eq!(restored, pid, "restore must keep the pid");
        pid = restored;
    }
    wait_lines(&log, 25);
    let n = lines(&log);
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "log not continuous: {n:?}");
    assert!(!std::fs::read_to_string(&log).unwrap().contains("CORRUPT"));
}

/// With --leave-running the original goes on, and its images restore too.
#[test]
fn leave_running_then_restore_from_the_images() {
    let mut s = Scene::new("leave");
    let bin = s.cc("counter", COUNTER);
    let log = s.path("log");
    let pid = s.spawn(Command::new(&bin).arg(&log));
    wait_lines(&log, 3);
    let images = s.path("img");
    s.checkpoint(pid, &images, true);
    let at = lines(&log).len();
    wait_lines(&log, at + 5);
    // SAFETY: killing our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid);
    let before = lines(&log).len();
    let r = s.restore(&images);
    assert_eq!(r, pid);
    wait_lines(&log, before + 5);
    assert!(!std::fs::read_to_string(&log).unwrap().contains("CORRUPT"));
}

const THREADS: &str = include_str!("programs/threads64.c");

/// 64 threads under a mutex keep counting after a restore, all of them,
/// and the main thread goes on creating a helper thread for every line.
#[test]
fn sixty_four_threads_keep_counting() {
    let mut s = Scene::new("threads");
    let bin = s.cc("threads", THREADS);
    let log = s.path("log");
    let pid = s.spawn(Command::new(&bin).arg(&log));
    wait_lines(&log, 3);
    let images = s.path("img");
    s.checkpoint(pid, &images, false);
    let before = std::fs::read_to_string(&log).unwrap();
    let r = s.restore(&images);
    // 64 workers and the main thread, and the main thread's helper if the
    // checkpoint found one running.
    let tasks = std::fs::read_dir(format!("/proc/{r}/task")).unwrap().count();
    assert!(tasks == 65 || tasks == 66, "{tasks} tasks after the restore, expected 65 (66 with a helper)");
    wait_lines(&log, lines(&log).len() + 5);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("BAD"), "{text}");
    // "n total sum ok helpers": a helper thread on every line.
    for l in text.lines() {
        let w: Vec<&str> = l.split_whitespace().collect();
        assert!(w.len() == 5 && w[0] == w[4], "a line without its helper thread: {l:?}\n{text}");
    }
    let last: Vec<u64> = text.lines().last().unwrap().split_whitespace().skip(1).take(2).map(|w| w.parse().unwrap()).collect();
    let then: Vec<u64> = before.lines().last().unwrap().split_whitespace().skip(1).take(2).map(|w| w.parse().unwrap()).collect();
    // The total is counted under the mutex and each thread's count right
    // after it: at most one increment per thread may be in between.
    assert!(
        last[0] > then[0] && last[1] <= last[0] && last[0] - last[1] <= 64,
        "counters did not go on consistently: {then:?} -> {last:?}"
    );
}

fn lpm(args: &[&str]) -> (bool, String) {
    let out = Command::new(LPM).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Corrupt, truncated and missing images are refused by name, and bad pids
/// are refused without touching anything.
#[test]
fn bad_input_is_refused_clearly() {
    let mut s = Scene::new("bad");
    let bin = s.cc("counter", COUNTER);
    let log = s.path("log");
    let pid = s.spawn(Command::new(&bin).arg(&log));
    wait_lines(&log, 2);
    let images = s.path("img");
    s.checkpoint(pid, &images, true);
    let tree = images.join("tree.img");
    let good = std::fs::read(&tree).unwrap();
    let img = images.to_str().unwrap();

    let (ok, err) = lpm(&["restore", "--verify", "--images", img]);
    assert!(!ok && err.contains(&format!("pid {pid} is taken")), "{err}");

    std::fs::write(&tree, &good[..good.len() / 2]).unwrap();
    let (ok, err) = lpm(&["restore", "--verify", "--images", img]);
    assert!(!ok && err.contains("truncated"), "{err}");

    let mut flipped = good.clone();
    let at = flipped.len() - 10;
    flipped[at] ^= 0x40;
    std::fs::write(&tree, &flipped).unwrap();
    let (ok, err) = lpm(&["restore", "--verify", "--images", img]);
    assert!(!ok && err.contains("checksum"), "{err}");

    std::fs::remove_file(&tree).unwrap();
    let (ok, err) = lpm(&["restore", "--verify", "--images", img]);
    assert!(!ok && err.contains("tree.img"), "{err}");

    std::fs::write(&tree, &good).unwrap();
    let pages = std::fs::read_dir(&images).unwrap().map(|e| e.unwrap().path()).find(|p| p.to_string_lossy().contains("pages-")).unwrap();
    let mut data = std::fs::read(&pages).unwrap();
    let at = data.len() - 100;
    data[at] ^= 1;
    std::fs::write(&pages, &data).unwrap();
    // SAFETY: killing our own child so the pid is free for the attempt.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    reap(pid);
    let (ok, err) = lpm(&["restore", "--verify", "--images", img]);
    assert!(!ok && err.contains("checksum mismatch in page run"), "{err}");
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "a failed restore left pid {pid} behind");

    let (ok, err) = lpm(&["checkpoint", "--pid", "999999", "--images", s.path("x").to_str().unwrap()]);
    assert!(!ok && err.contains("no such process"), "{err}");
    let (ok, err) = lpm(&["checkpoint", "--pid", "2", "--images", s.path("y").to_str().unwrap()]);
    assert!(!ok && err.contains("kernel thread"), "{err}");
}

/// A pseudo-terminal slave whose master is outside the tree (held by the
/// parent, not checkpointed) is named by `lpm inspect` and refused at
/// checkpoint, by fd and kind, and the process runs on untouched.
#[test]
fn unsupported_resource_is_refused_and_process_untouched() {
    let mut s = Scene::new("unsup");
    let log = s.path("log");
    let script = "import os,sys,time\nm,t=os.openpty()\nif os.fork():\n os.close(t)\n while True: time.sleep(1)\nos.close(m)\nf=open(sys.argv[1],'a',buffering=1)\nn=0\nwhile True:\n n+=1\n f.write(f'{n}\\n')\n time.sleep(0.02)\n";
    let parent = s.spawn(Command::new("python3").args(["-c", script]).arg(&log));
    wait_lines(&log, 3);
    let pid: i32 = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).unwrap().trim().parse().unwrap();
    // `lpm inspect` names the same descriptor without stopping the tree.
    let out = Command::new(LPM).args(["inspect", "--pid", &pid.to_string()]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && text.contains("unsupported file descriptor") && text.contains("/dev/pt"), "{text}");
    let out = Command::new(LPM).args(["inspect", "--pid", &pid.to_string(), "--json"]).output().unwrap();
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((j["passed"].as_bool(), j["refusals"][0]["pid"].as_i64()), (Some(false), Some(pid as i64)), "{j}");
    let (ok, err) = lpm(&["checkpoint", "--pid", &pid.to_string(), "--images", s.path("img").to_str().unwrap()]);
    assert!(!ok && err.contains("unsupported file descriptor") && err.contains("/dev/pt"), "{err}");
    let at = lines(&log).len();
    wait_lines(&log, at + 3);
}

/// A tree started by `unshare --fork --pid --mount-proc --net --uts --ipc`:
/// its init is checkpointed and restored into fresh namespaces, where it is
/// pid 1 again with its host name, and goes on counting.
#[test]
fn unshare_namespace_tree_is_restored_into_new_namespaces() {
    let mut s = Scene::new("ns");
    let log = s.path("log");
    let script = format!(
        "hostname lpm-ns-test; n=0; while true; do n=$((n+1)); echo \"$n $$ $(hostname) $(readlink /proc/self/ns/pid)\" >> {}; sleep 0.05; done",
        log.display()
    );
    let unshare =
        s.spawn(Command::new("unshare").args(["--fork", "--pid", "--mount-proc", "--net", "--uts", "--ipc", "sh", "-c", &script]));
    wait_lines(&log, 3);
    let init: i32 = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).unwrap().trim().parse().unwrap();
    let images = s.path("img");
    s.checkpoint(init, &images, false);
    reap(unshare);
    let before = lines(&log).len();
    // Inside its own pid namespace only the namespace's pids are kept;
    // the host pid is new.
    s.restore(&images);
    wait_lines(&log, before + 5);
    let text = std::fs::read_to_string(&log).unwrap();
    let n = lines(&log);
    assert!(n.windows(2).all(|w| w[1] == w[0] + 1), "log not continuous: {n:?}");
    let last: Vec<&str> = text.lines().last().unwrap().split_whitespace().collect();
    assert_eq!(last[1], "1", "restored shell is not pid 1 of its namespace: {text}");
    assert_eq!(last[2], "lpm-ns-test");
    let host_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    assert_ne!(last[3], host_ns.to_string_lossy(), "restored tree shares the host pid namespace");
}

/// A cgroup v2 directory made for one test, removed when it ends.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.freeze"), "0");
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for p in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                // SAFETY: killing processes this test put in its cgroup.
                unsafe { libc::kill(p, libc::SIGKILL) };
                reap(p);
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A tree alone in its own cgroup is stopped by the cgroup v2 freezer, left
/// thawed afterwards, and goes on.
#[test]
fn tree_in_own_cgroup_is_frozen_by_the_cgroup_freezer() {
    let mut s = Scene::new("cgroup");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mount = lpm_sys::probe::cgroup2_from_mountinfo(&mountinfo).expect("cgroup2 is not mounted: the freezer test needs it");
    let cg = Cgroup(mount.join(s.dir.file_name().unwrap()));
    std::fs::create_dir(&cg.0).unwrap();
    let bin = s.cc("counter", COUNTER);
    let log = s.path("log");
    let procs = cg.0.join("cgroup.procs");
    let script = format!("echo $$ > {}; exec {} {}", procs.display(), bin.display(), log.display());
    let pid = s.spawn(Command::new("sh").args(["-c", &script]));
    wait_lines(&log, 3);
    let out = Command::new(LPM)
        .args(["checkpoint", "--leave-running", "--pid", &pid.to_string(), "--images"])
        .arg(s.path("img"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("by the cgroup freezer"), "{err}");
    assert_eq!(std::fs::read_to_string(cg.0.join("cgroup.freeze")).unwrap().trim(), "0", "cgroup left frozen");
    let at = lines(&log).len();
    wait_lines(&log, at + 3);
}

const CREDS: &str = r#"
#define _GNU_SOURCE
#include <grp.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    prctl(PR_CAPBSET_DROP, 21);
    gid_t g[2] = {5, 7};
    setgroups(2, g);
    prctl(PR_SET_KEEPCAPS, 1);
    setresgid(1000, 1001, 1002);
    setresuid(1000, 1001, 1002);
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2] = {{1 << 10 | 1 << 12, 1 << 10 | 1 << 12, 1 << 12}, {0, 0, 0}};
    syscall(SYS_capset, &h, d);
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, 12, 0, 0);
    for (;;) pause();
}
"#;

fn creds_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| ["Uid", "Gid", "Groups", "Cap"].iter().any(|k| l.starts_with(k)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// uids, gids, groups and every capability set (bounding, ambient too)
/// come back exactly for an unprivileged process with chosen capabilities.
#[test]
fn credentials_and_capabilities_are_restored_exactly() {
    let mut s = Scene::new("creds");
    let bin = s.cc("creds", CREDS);
    let pid = s.spawn(&mut Command::new(&bin));
    let t = Instant::now();
    while !creds_of(pid).contains("Uid:\t1000\t1001\t1002") {
        assert!(t.elapsed() < Duration::from_secs(10), "program never changed its credentials");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    let before = creds_of(pid);
    let images = s.path("img");
    s.checkpoint(pid, &images, false);
    let r = s.restore(&images);
    assert_eq!(creds_of(r), before);
}

/// Without --detach, lpm waits for the restored root and exits with its
/// status.
#[test]
fn restore_without_detach_passes_on_the_exit_status() {
    let mut s = Scene::new("status");
    let stop = s.path("stop");
    let script = format!("while [ ! -e {} ]; do sleep 0.02; done; exit 42", stop.display());
    let pid = s.spawn(Command::new("sh").args(["-c", &script]));
    let images = s.path("img");
    s.checkpoint(pid, &images, false);
    let lpm = Command::new(LPM).args(["restore", "--verify", "--images"]).arg(&images).stderr(Stdio::piped()).spawn().unwrap();
    // Whenever the file appears (before the restore is done or after),
    // the restored shell sees it at its next look and exits 42.
    std::fs::write(&stop, "").unwrap();
    let out = lpm.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(42), "lpm restore: {}", String::from_utf8_lossy(&out.stderr));
}

const WRITER: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
int main(int argc, char **argv) {
    size_t len = 64 << 20;
    unsigned char *buf = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    memset(buf, 1, len / 2);
    signal(SIGUSR1, on_usr1);
    FILE *f = fopen(argv[1], "w");
    fprintf(f, "%lx\n", (unsigned long)buf);
    fclose(f);
    for (;;) {
        while (!go) pause();
        go = 0;
        buf[0] = 2; buf[5 * 4096 + 17] = 3; buf[100 * 4096] = 4;
        buf[(len / 2) + 3 * 4096] = 5; /* a page never touched before */
        f = fopen(argv[2], "w");
        fclose(f);
    }
}
"#;

/// The dirty tracker (userfaultfd write-protect async + PAGEMAP_SCAN)
/// reports exactly the pages a running program wrote, including one it
/// never touched before, then nothing until it writes again; dropping it
/// leaves the program running normally.
#[test]
fn dirty_tracker_reports_exactly_the_written_pages() {
    let mut s = Scene::new("dirty");
    let bin = s.cc("writer", WRITER);
    let (addr_file, done) = (s.path("addr"), s.path("done"));
    let pid = s.spawn(Command::new(&bin).arg(&addr_file).arg(&done));
    let t = Instant::now();
    while std::fs::read_to_string(&addr_file).map(|a| a.trim().is_empty()).unwrap_or(true) {
        assert!(t.elapsed() < Duration::from_secs(10), "writer never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(50));
    let base = u64::from_str_radix(std::fs::read_to_string(&addr_file).unwrap().trim(), 16).unwrap();
    let buf = (base, base + (64 << 20));
    let mut tracker = lpm_engine::DirtyTracker::start(pid).expect("start tracking");
    let in_buf = |d: &lpm_engine::Dirty| -> Vec<u64> {
        let mut pages = Vec::new();
        for &(a, b) in &d.written {
            let mut p = a.max(buf.0);
            while p < b.min(buf.1) {
                pages.push((p - base) / 4096);
                p += 4096;
            }
        }
        pages
    };
    assert_eq!(in_buf(&tracker.collect().unwrap()), Vec::<u64>::new(), "pages reported before any write");
    for round in 0..2 {
        let _ = std::fs::remove_file(&done);
        // SAFETY: signalling our own child.
        unsafe { libc::kill(pid, libc::SIGUSR1) };
        let t = Instant::now();
        while !done.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "writer did not write: {} {}",
                std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default(),
                std::fs::read_to_string(format!("/proc/{pid}/stack")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let d = tracker.collect().unwrap();
        assert_eq!(in_buf(&d), vec![0, 5, 100, 8192 + 3], "round {round}: written pages of the buffer");
        assert_eq!(in_buf(&tracker.collect().unwrap()), Vec::<u64>::new(), "round {round}: pages reported twice");
    }
    drop(tracker);
    let _ = std::fs::remove_file(&done);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGUSR1) };
    let t = Instant::now();
    while !done.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "writer stuck after tracking stopped");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).unwrap_or_default().contains("userfaultfd"));
}

/// `lpm restore --verify` reads the restored tree back before it runs:
/// a restore that gets one field wrong (a test's sabotage: the umask) is
/// refused, naming process, object and field, recorded against found, and
/// leaves nothing behind; without the sabotage the same image restores.
#[test]
fn verify_names_the_field_a_restore_got_wrong() {
    let mut s = Scene::new("verify");
    let pid = s.spawn(Command::new("python3").args(["-c", "import os, time\nos.umask(0o027)\ntime.sleep(1000)"]));
    let t = Instant::now();
    while !std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default().contains("Umask:\t0027") {
        assert!(t.elapsed() < Duration::from_secs(10), "the program never set its umask");
        std::thread::sleep(Duration::from_millis(10));
    }
    let images = s.path("img");
    s.checkpoint(pid, &images, false);
    let out = Command::new(LPM)
        .args(["restore", "--verify", "--detach", "--images"])
        .arg(&images)
        .env(lpm_engine::SABOTAGE_ENV, "umask")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a restore that differs from its image succeeded");
    assert!(err.contains(&format!("pid {pid}")) && err.contains("Umask") && err.contains("recorded \"0027\", found \"0007\""), "{err}");
    // The tree was killed: its pid is free for the next restore.
    let again = s.restore(&images);
    assert_eq!(again, pid);
    let st = std::fs::read_to_string(format!("/proc/{again}/status")).unwrap();
    assert!(st.contains("Umask:\t0027"), "{st}");
}

/// The checkpoint reads its stopped tree back once the image is written:
/// an image that does not match the tree (a test's sabotage: a wrong
/// umask recorded) fails the checkpoint, naming the field, and the tree
/// goes on running untouched.
#[test]
fn checkpoint_refuses_an_image_that_differs_from_the_tree() {
    let mut s = Scene::new("reread");
    let log = s.path("count");
    let script =
        format!("import time\nn = 0\nwhile True:\n    n += 1\n    open('{}', 'a').write(f'{{n}}\\n')\n    time.sleep(0.01)", log.display());
    let pid = s.spawn(Command::new("python3").args(["-c", &script]));
    wait_lines(&log, 3);
    let out = Command::new(LPM)
        .args(["checkpoint", "--pid", &pid.to_string(), "--images"])
        .arg(s.path("img"))
        .env(lpm_engine::SABOTAGE_ENV, "dump-umask")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a checkpoint whose image differs from the tree succeeded");
    assert!(err.contains(&format!("pid {pid}")) && err.contains("Umask"), "{err}");
    let before = lines(&log).len();
    wait_lines(&log, before + 3);
}
