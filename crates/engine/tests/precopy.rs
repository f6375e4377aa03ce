//! The engine's seams for live migration, on the real kernel (run as root):
//! a switchover checkpoint that leaves out the pages a receiver already
//! holds, a tree left frozen by its cgroup after the dump and then thawed
//! or killed, and a held restore (in a given cgroup and network namespace)
//! that either runs or leaves nothing behind.
//!
//! Each test puts its programs in a cgroup v2 of its own (the freezer
//! needs it) and removes everything it made when it ends, also on failure.

mod common;
use common::wait_for;

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lpm_engine::{After, DumpOptions, RestoreOptions};
use lpm_sys::pagemap::{Pagemap, Query, PAGE_IS_FILE, PAGE_IS_PFNZERO, PAGE_IS_PRESENT, PAGE_IS_SWAPPED};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

const PAGE: u64 = 4096;

/// 64 MiB whose page k holds k+1 (as u64) over and over; the loop keeps
/// stamping a counter into the first word of 256 "hot" pages spread over
/// the buffer. On SIGUSR1 it checks every page against what it expects
/// and writes "ok COUNTER" or "bad PAGE" to argv[2].
const PATTERN: &str = r#"
import os, signal, struct, sys, time
N, HOT = 16384, 256
buf = bytearray(b"".join(struct.pack("<Q", k + 1) * 512 for k in range(N)))
last = [0] * HOT
asked = []
signal.signal(signal.SIGUSR1, lambda s, f: asked.append(1))
def report(text):
    with open(sys.argv[2] + ".tmp", "w") as f:
        f.write(text)
    os.replace(sys.argv[2] + ".tmp", sys.argv[2])
def verify():
    hot = {(j * 61) % N: last[j] for j in range(HOT) if last[j]}
    for k in range(N):
        want = struct.pack("<Q", k + 1) * 512
        if k in hot:
            want = struct.pack("<Q", hot[k]) + want[8:]
        if buf[k * 4096:(k + 1) * 4096] != want:
            return "bad %d" % k
    return "ok %d" % counter
open(sys.argv[1], "w").write("ready")
counter = 0
while True:
    counter += 1
    j = counter % HOT
    off = ((j * 61) % N) * 4096
    buf[off:off + 8] = struct.pack("<Q", counter)
    last[j] = counter
    if asked:
        asked.clear()
        report(verify())
    if counter % 64 == 0:
        time.sleep(0.0005)
"#;

/// Appends an increasing number to argv[1] every 5 ms.
const COUNTER: &str = r#"
import sys, time
n = 0
with open(sys.argv[1], "a") as f:
    while True:
        n += 1
        f.write("%d\n" % n)
        f.flush()
        time.sleep(0.005)
"#;

/// Maps a private area of 1 to 16 MiB, touches it and unmaps it, over
/// and over.
const CHURN: &str = r#"
import mmap, sys
open(sys.argv[1], "w").write("ready")
n = 0
while True:
    n += 1
    m = mmap.mmap(-1, (1 + n % 16) << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(0, len(m), 65536):
        m[i] = 1
    m.close()
"#;

/// Threads that start and end all the time, and children that are
/// forked and exit all the time (a thread per request, a shell's
/// subshells).
const SPAWNER: &str = r#"
import os, sys, threading
open(sys.argv[1], "w").write("ready")
def forks():
    while True:
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
threading.Thread(target=forks, daemon=True).start()
while True:
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
"#;

static SEQ: AtomicU32 = AtomicU32::new(0);

/// One test's directory, cgroups and processes; all removed on drop.
struct Scene {
    dir: PathBuf,
    cgroups: Vec<PathBuf>,
    pids: Vec<i32>,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        common::sweep_dead_scenes("lpm-precopy-");
        let name = format!("lpm-precopy-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        // tmpfs: a precopy file reaches offsets up to 128 TiB (the stack's
        // addresses), beyond what ext4 allows (16 TiB).
        let dir = Path::new("/dev/shm").join(name);
        fs::create_dir_all(&dir).unwrap();
        Scene { dir, cgroups: Vec::new(), pids: Vec::new() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A new cgroup v2 directory of this test.
    fn cgroup(&mut self) -> PathBuf {
        let name = format!("{}-cg{}", self.dir.file_name().unwrap().to_string_lossy(), self.cgroups.len());
        let cg = common::cgroup2().join(name);
        fs::create_dir(&cg).unwrap_or_else(|e| panic!("create cgroup {}: {e}", cg.display()));
        self.cgroups.push(cg.clone());
        cg
    }

    /// Runs `python3 SCRIPT ARGS...` (through `wrap`, a shell prefix run
    /// first), as the first and only process of cgroup `cg` when given;
    /// the pid is the python process's.
    fn python(&mut self, script: &str, args: &[&Path], cg: Option<&Path>, wrap: &str) -> i32 {
        let file = self.path(&format!("prog{}.py", self.pids.len()));
        fs::write(&file, script).unwrap();
        let join = cg.map(|c| format!("echo $$ > {}/cgroup.procs; ", c.display())).unwrap_or_default();
        let args: Vec<String> = args.iter().map(|a| a.display().to_string()).collect();
        let cmd = format!("{join}exec {wrap} python3 {} {}", file.display(), args.join(" "));
        // Reaped by pid in Drop: a checkpoint that kills a tree reaps it
        // itself, so std's Child would wait for a pid that is gone.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("sh").args(["-c", &cmd]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let pid = child.id() as i32;
        self.pids.push(pid);
        pid
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for cg in &self.cgroups {
            if let Ok(procs) = fs::read_to_string(cg.join("cgroup.procs")) {
                for p in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                    lpm_sys::misc::kill(p, libc::SIGKILL);
                }
            }
            let _ = fs::write(cg.join("cgroup.freeze"), "0");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        common::kill_and_reap(&self.pids, deadline);
        for cg in &self.cgroups {
            // A cgroup can be removed once its last task is gone.
            while fs::remove_dir(cg).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn count(log: &Path) -> usize {
    fs::read_to_string(log).map(|s| s.lines().count()).unwrap_or(0)
}

fn status(pid: i32, key: &str) -> String {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim_start_matches(':').trim().to_string())).unwrap_or_default()
}

fn frozen(cg: &Path) -> bool {
    fs::read_to_string(cg.join("cgroup.events")).unwrap().lines().any(|l| l == "frozen 1")
}

fn gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits (up to 5 s) for child `pid` to end; returns how.
fn wait_child(pid: i32) -> WaitStatus {
    let t = Instant::now();
    loop {
        match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)).unwrap() {
            WaitStatus::StillAlive if t.elapsed() < Duration::from_secs(5) => std::thread::sleep(Duration::from_millis(2)),
            st => return st,
        }
    }
}

/// The receiver's side of pre-copy, played by the test: the pages it
/// holds, each as current as when it was copied.
struct Receiver {
    pid: i32,
    file: fs::File,
    held: BTreeSet<u64>,
    copied: u64,
}

impl Receiver {
    /// Copies the present anonymous pages of `ranges` into the precopy
    /// file at offset = address, and forgets every other page of them.
    fn copy(&mut self, ranges: &[(u64, u64)]) {
        let mut pm = Pagemap::open(self.pid).unwrap();
        let q = Query {
            flags: 0,
            category_mask: 0,
            anyof_mask: (PAGE_IS_PRESENT | PAGE_IS_SWAPPED) as u64,
            return_mask: (PAGE_IS_FILE | PAGE_IS_PFNZERO) as u64,
        };
        let mut regions = Vec::new();
        let mut buf = Vec::new();
        for &(s, e) in ranges {
            let mut p = s;
            while p < e {
                self.held.remove(&p);
                p += PAGE;
            }
            regions.clear();
            if pm.scan(s, e, q, &mut regions).is_err() {
                continue; // unmapped meanwhile: nothing held there
            }
            for r in regions.iter().filter(|r| r.categories & (PAGE_IS_FILE | PAGE_IS_PFNZERO) as u64 == 0) {
                buf.resize((r.end - r.start) as usize, 0);
                if lpm_sys::ptrace::read_mem(self.pid, r.start, &mut buf).is_err() {
                    continue;
                }
                self.file.write_all_at(&buf, r.start).unwrap();
                self.copied += (r.end - r.start) / PAGE;
                let mut p = r.start;
                while p < r.end {
                    self.held.insert(p);
                    p += PAGE;
                }
            }
        }
    }

    /// Forgets pages written since they were copied.
    fn forget(&mut self, d: &lpm_engine::Dirty) {
        for &(s, e) in d.written.iter().chain(&d.new_areas) {
            let mut p = s;
            while p < e {
                self.held.remove(&p);
                p += PAGE;
            }
        }
    }

    /// The held pages as sorted ranges.
    fn ranges(&self) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &p in &self.held {
            match out.last_mut() {
                Some(l) if l.1 == p => l.1 += PAGE,
                _ => out.push((p, p + PAGE)),
            }
        }
        out
    }
}

fn writable_private(pid: i32) -> Vec<(u64, u64)> {
    lpm_engine::proc::maps(pid)
        .unwrap()
        .iter()
        .filter(|e| !e.shared() && e.prot() & libc::PROT_WRITE as u32 != 0)
        .map(|e| (e.start, e.end))
        .collect()
}

fn ask(pid: i32, result: &Path) -> String {
    let _ = fs::remove_file(result);
    lpm_sys::misc::kill(pid, libc::SIGUSR1);
    wait_for("the program's verification", 20, || result.exists());
    fs::read_to_string(result).unwrap()
}

/// Pre-copy, then the switchover: the checkpoint taken after the last
/// dirty report (with the tree stopped) saves only what changed, and the
/// restore, reading the rest from the precopy file, gives back a program
/// whose whole 64 MiB buffer is exactly what it expects.
#[test]
fn switchover_after_precopy_saves_only_what_changed() {
    let mut s = Scene::new("switch");
    let cg = s.cgroup();
    let (ready, result, img) = (s.path("ready"), s.path("result"), s.path("img"));
    fs::create_dir(&img).unwrap();
    let pid = s.python(PATTERN, &[&ready, &result], Some(&cg), "");
    wait_for("the program to fill its buffer", 30, || ready.exists());
    assert!(ask(pid, &result).starts_with("ok "), "the program fails before any checkpoint");

    let mut tracker = lpm_engine::DirtyTracker::start(pid).expect("start dirty tracking");
    let file = fs::File::create(img.join(format!("precopy-{pid}.pages"))).unwrap();
    let mut rx = Receiver { pid, file, held: BTreeSet::new(), copied: 0 };
    rx.copy(&writable_private(pid));
    let first = rx.copied;
    assert!(first >= 16384, "first round copied only {first} pages");
    for round in 0..2 {
        std::thread::sleep(Duration::from_millis(100));
        let d = tracker.collect().expect("collect dirty pages");
        assert!(d.pages() > 0, "round {round}: a program writing all the time dirtied nothing");
        let dirty: Vec<(u64, u64)> = d.written.iter().chain(&d.new_areas).copied().collect();
        rx.copy(&dirty);
    }

    // The switchover: stop, last report, dump.
    let stopped = lpm_engine::stop_tree(pid).expect("stop the tree");
    assert_eq!(stopped.pids(), &[pid]);
    assert!(stopped.cgroup().is_some(), "the tree alone in its cgroup is not stopped through the freezer");
    let last = tracker.collect().expect("last dirty report");
    rx.forget(&last);
    let opts = DumpOptions { precopied: HashMap::from([(pid, rx.ranges())]), ..Default::default() };
    let stats = stopped.dump(&img, &opts).expect("switchover checkpoint");
    drop(tracker);
    eprintln!("first round {first} pages; switchover: {stats:?}");
    assert!(stats.cgroup_frozen);
    assert!(stats.precopied_pages >= 16000, "only {} pages precopied", stats.precopied_pages);
    assert!(
        stats.pages * 10 < stats.precopied_pages,
        "{} pages saved beside {} precopied: most should have been left to the receiver",
        stats.pages,
        stats.precopied_pages
    );
    wait_for("the checkpointed program to be gone", 5, || gone(pid));

    let tree = lpm_image::read_tree(&img).unwrap();
    let mm = tree.processes[0].mm.as_ref().unwrap();
    assert_eq!(mm.precopy_file, format!("precopy-{pid}.pages"));
    let in_image: u64 = mm.pages.iter().filter(|r| r.precopied).map(|r| r.npages).sum();
    assert_eq!(in_image, stats.precopied_pages);
    assert!(mm.pages.iter().filter(|r| r.precopied).all(|r| r.offset == 0 && r.xxh3 == 0 && !r.zero));
    assert!(lpm_image::render(&tree).contains(&format!("read from precopy-{pid}.pages")));

    let opts = RestoreOptions { cgroups: vec![cg.clone()], ..Default::default() };
    let r = lpm_engine::restore(&img, &opts).expect("restore");
    assert_eq!(r.root_pid, pid);
    let procs = fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), pid.to_string(), "the restored tree is not in the cgroup it was given");
    let verdict = ask(pid, &result);
    assert!(verdict.starts_with("ok "), "restored program found its memory wrong: {verdict}");

    // Again, with the precopied pages left to a lazy fill that runs once
    // the tree does: the program's own check touches every page.
    lpm_sys::misc::kill(pid, libc::SIGKILL);
    assert!(matches!(wait_child(pid), WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)));
    // This time the root is cloned from a vessel made ahead in the cgroup,
    // as a migration's target does.
    let vessel = lpm_engine::Vessel::new(std::slice::from_ref(&cg)).expect("make a restore vessel");
    let procs = fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), vessel.pid().to_string(), "the vessel is not in the cgroup it was given");
    let opts = RestoreOptions { cgroups: vec![cg.clone()], lazy_fill: true, vessel: Some(vessel), ..Default::default() };
    let mut held = lpm_engine::restore_held(&img, &opts).expect("restore for a lazy fill");
    let procs = fs::read_to_string(cg.join("cgroup.procs")).unwrap();
    assert_eq!(procs.trim(), pid.to_string(), "the root cloned from the vessel is not alone in the cgroup");
    let lazy = held.take_lazy().expect("precopied pages left to the lazy fill");
    assert!(lazy.pages_left() >= 16000, "only {} pages left to the lazy fill", lazy.pages_left());
    let filler = std::thread::spawn(move || lazy.run());
    let r = held.release().expect("release after a lazy restore");
    assert_eq!(r.root_pid, pid);
    let verdict = ask(pid, &result);
    assert!(verdict.starts_with("ok "), "program restored with a lazy fill found its memory wrong: {verdict}");
    let st = filler.join().expect("filler thread").expect("lazy fill");
    eprintln!("lazy fill: {st:?}");
    assert!(st.pages + st.dropped >= 16000, "the lazy fill copied too little: {st:?}");

    // A precopy file shorter than its runs is refused by name.
    lpm_sys::misc::kill(pid, libc::SIGKILL);
    assert!(matches!(wait_child(pid), WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)));
    let name = format!("precopy-{pid}.pages");
    fs::OpenOptions::new().write(true).open(img.join(&name)).unwrap().set_len(PAGE).unwrap();
    let err = lpm_engine::restore_held(&img, &RestoreOptions::default()).expect_err("restore from a truncated precopy file");
    assert!(format!("{err}").contains(&name), "error does not name the precopy file: {err}");
    assert!(gone(pid), "a failed restore left its root behind");
}

/// A lazy restore copies before the tree runs the words the kernel writes
/// when a restored thread exits (its clear_child_tid word and robust list
/// head): a fault of an exiting task is not handed to the fill (the
/// kernel's handle_userfault refuses PF_EXITING tasks), so the write would
/// be lost and a pthread_join on that word would wait for ever. The
/// program runs with rseq off (glibc.pthread.rseq=0), so no rseq area
/// brings the page in by chance.
#[test]
fn lazy_restore_copies_the_exit_words_first() {
    let mut s = Scene::new("exitwords");
    let cg = s.cgroup();
    let (ready, result, img) = (s.path("ready"), s.path("result"), s.path("img"));
    fs::create_dir(&img).unwrap();
    let pid = s.python(PATTERN, &[&ready, &result], Some(&cg), "env GLIBC_TUNABLES=glibc.pthread.rseq=0");
    wait_for("the program to fill its buffer", 30, || ready.exists());
    // Stopped, then every page copied: all of memory is precopied.
    let stopped = lpm_engine::stop_tree(pid).expect("stop the tree");
    let file = fs::File::create(img.join(format!("precopy-{pid}.pages"))).unwrap();
    let mut rx = Receiver { pid, file, held: BTreeSet::new(), copied: 0 };
    rx.copy(&writable_private(pid));
    let opts = DumpOptions { precopied: HashMap::from([(pid, rx.ranges())]), ..Default::default() };
    stopped.dump(&img, &opts).expect("checkpoint");
    wait_for("the checkpointed program to be gone", 5, || gone(pid));
    let tree = lpm_image::read_tree(&img).unwrap();
    let threads = &tree.processes[0].threads;
    assert!(threads.iter().all(|t| t.rseq.as_ref().is_none_or(|r| r.addr == 0)), "rseq is on despite the tunable: {threads:?}");

    let opts = RestoreOptions { cgroups: vec![cg.clone()], lazy_fill: true, ..Default::default() };
    let mut held = lpm_engine::restore_held(&img, &opts).expect("restore for a lazy fill");
    let lazy = held.take_lazy().expect("precopied pages left to the lazy fill");
    let pagemap = fs::File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let mut words = 0;
    for t in threads {
        for addr in [t.clear_child_tid, t.robust_list].into_iter().filter(|&a| a != 0) {
            let mut entry = [0u8; 8];
            pagemap.read_exact_at(&mut entry, addr / PAGE * 8).unwrap();
            assert!(u64::from_le_bytes(entry) >> 63 == 1, "thread {}: the page of {addr:#x} is left to the lazy fill", t.tid);
            words += 1;
        }
    }
    assert!(words > 0, "no thread has a clear_child_tid word or a robust list: {threads:?}");
    let filler = std::thread::spawn(move || lazy.run());
    held.release().expect("release after a lazy restore");
    let verdict = ask(pid, &result);
    assert!(verdict.starts_with("ok "), "program restored with a lazy fill found its memory wrong: {verdict}");
    filler.join().expect("filler thread").expect("lazy fill");
}

/// Dirty tracking of a process that maps and unmaps areas all the time:
/// an area unmapped between the read of the maps and its registration is
/// skipped (and counts as new at the next collection), never a failure.
/// Each start and collection races with the program; before areas that
/// changed were skipped, about one in a few hundred failed with EINVAL.
#[test]
fn tracking_survives_areas_mapped_and_unmapped_meanwhile() {
    let mut s = Scene::new("churn");
    let ready = s.path("ready");
    let pid = s.python(CHURN, &[&ready], None, "");
    wait_for("the program to start", 30, || ready.exists());
    let (mut collections, mut new_areas) = (0, 0);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(3) {
        let mut tracker =
            lpm_engine::DirtyTracker::start(pid).unwrap_or_else(|e| panic!("start tracking after {collections} collections: {e}"));
        for _ in 0..20 {
            let d = tracker.collect().unwrap_or_else(|e| panic!("collection {collections}: {e}"));
            collections += 1;
            new_areas += d.new_areas.len();
        }
    }
    assert!(!gone(pid), "the program died under tracking");
    assert!(new_areas > 0, "in {collections} collections the program never mapped a new area");
    eprintln!("{collections} collections, {new_areas} new areas");
}

/// Stopping a tree whose threads and children come and go all the time:
/// a thread or a process that ends while the tree is being stopped is
/// gone (or a zombie, recorded as one), never a failure of the stop.
/// With the cgroup freezer (as a migration stops a partition) and
/// without it.
#[test]
fn stopping_a_tree_whose_tasks_come_and_go() {
    let mut s = Scene::new("spawner");
    let cg = s.cgroup();
    let (ready, ready2) = (s.path("ready"), s.path("ready2"));
    let in_cgroup = s.python(SPAWNER, &[&ready], Some(&cg), "");
    let alone = s.python(SPAWNER, &[&ready2], None, "");
    wait_for("the programs to start", 30, || ready.exists() && ready2.exists());
    for (pid, how) in [(in_cgroup, "through its cgroup"), (alone, "thread by thread")] {
        let (mut stops, mut zombies) = (0, 0);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            let stopped = lpm_engine::stop_tree(pid).unwrap_or_else(|e| panic!("stop {how}, after {stops} stops: {e} ({e:?})"));
            assert_eq!(stopped.cgroup().is_some(), pid == in_cgroup, "stopped {how}");
            zombies += stopped.pids().iter().filter(|&&p| lpm_engine::proc::Stat::read(p).is_ok_and(|s| s.state() == 'Z')).count();
            stopped.resume();
            stops += 1;
        }
        assert!(!gone(pid), "the program died under the stops {how}");
        eprintln!("{how}: {stops} stops, {zombies} zombies seen");
    }
}

/// After::Frozen leaves the tree frozen by its cgroup, untraced; thawing
/// lets it go on; killing ends it. A tree not alone in a cgroup is
/// refused and goes on untouched.
#[test]
fn frozen_after_dump_then_thaw_or_kill() {
    let mut s = Scene::new("frozen");
    let cg = s.cgroup();
    let log = s.path("log");
    let pid = s.python(COUNTER, &[&log], Some(&cg), "");
    wait_for("the counter to start", 20, || count(&log) >= 3);

    let frozen_opts = DumpOptions { after: After::Frozen, ..Default::default() };
    let st = lpm_engine::checkpoint_with(pid, &s.path("img1"), &frozen_opts).expect("checkpoint leaving the tree frozen");
    assert!(st.cgroup_frozen);
    assert!(frozen(&cg), "cgroup.events does not say frozen");
    assert_eq!(status(pid, "TracerPid"), "0", "the frozen tree is still traced");
    let at = count(&log);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&log), at, "the frozen tree kept counting");

    lpm_engine::thaw_tree(pid, st.handoff, Duration::ZERO).expect("thaw");
    wait_for("the thawed tree to count on", 5, || count(&log) >= at + 5);
    assert!(!frozen(&cg));

    lpm_engine::checkpoint_with(pid, &s.path("img2"), &frozen_opts).expect("second frozen checkpoint");
    assert!(frozen(&cg));
    lpm_engine::kill_frozen_tree(pid).expect("kill the frozen tree");
    assert!(matches!(wait_child(pid), WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGKILL, _)), "the frozen tree did not die");

    // Not alone in a cgroup of its own: refused before anything is harmed.
    let log2 = s.path("log2");
    let other = s.python(COUNTER, &[&log2], None, "");
    wait_for("the second counter to start", 20, || count(&log2) >= 3);
    let err = lpm_engine::checkpoint_with(other, &s.path("img3"), &frozen_opts).expect_err("After::Frozen outside a cgroup");
    assert!(format!("{err}").contains("cgroup"), "{err}");
    assert_eq!(status(other, "TracerPid"), "0");
    let at = count(&log2);
    wait_for("the refused tree to count on", 5, || count(&log2) >= at + 3);
}

/// A tree whose network namespace is the caller's (it holds a veth
/// pair) is dumped only when the caller says so, and restored only
/// into a namespace the caller gives. restore_held leaves it complete and
/// stopped in the given cgroup and namespace; dropping it kills and reaps
/// everything; restoring again and releasing lets it run.
#[test]
fn held_restore_in_given_netns_and_cgroup() {
    let mut s = Scene::new("held");
    let cg = s.cgroup();
    let log = s.path("log");
    let pid = s.python(COUNTER, &[&log], Some(&cg), "unshare --net sh -c 'ip link add d0 type veth peer name d1 && exec \"$0\" \"$@\"'");
    wait_for("the counter to start", 20, || count(&log) >= 3);
    let img = s.path("img");

    let err = lpm_engine::checkpoint_with(pid, &img, &DumpOptions::default()).expect_err("dump of a namespace with an interface");
    assert!(format!("{err}").contains("interface d"), "{err}");
    let at = count(&log);
    wait_for("the refused tree to count on", 5, || count(&log) >= at + 3);

    let opts = DumpOptions { external_netns: true, ..Default::default() };
    lpm_engine::checkpoint_with(pid, &img, &opts).expect("checkpoint with the caller's network namespace");
    wait_for("the checkpointed tree to be gone", 5, || gone(pid));
    let ns = lpm_image::read_tree(&img).unwrap().processes[0].namespaces.clone().expect("owns namespaces");
    assert!(ns.net_external);

    let err = lpm_engine::restore_held(&img, &RestoreOptions::default()).expect_err("restore without the namespace");
    assert!(format!("{err}").contains("must be given"), "{err}");
    assert!(gone(pid));

    let netns = lpm_sys::net::new_netns().unwrap();
    let ino = fs::File::from(netns.as_fd().try_clone_to_owned().unwrap()).metadata().unwrap().ino();
    let target = s.cgroup();
    let opts = RestoreOptions { netns: Some(netns), cgroups: vec![target.clone()], ..Default::default() };
    let at = count(&log);
    let held = lpm_engine::restore_held(&img, &opts).expect("held restore");
    assert_eq!(held.root_pid, pid);
    assert_eq!(held.pids(), vec![pid]);
    assert_eq!(fs::read_link(format!("/proc/{pid}/ns/net")).unwrap().to_string_lossy(), format!("net:[{ino}]"));
    assert_eq!(fs::read_to_string(target.join("cgroup.procs")).unwrap().trim(), pid.to_string());
    assert_eq!(
        status(pid, "TracerPid"),
        rustix::thread::gettid().as_raw_nonzero().to_string(),
        "a held tree is not traced by the restoring thread"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count(&log), at, "a held tree ran");
    drop(held);
    assert!(gone(pid), "dropping a held restore left its root behind");
    assert_eq!(fs::read_to_string(target.join("cgroup.procs")).unwrap().trim(), "", "tasks left in the target cgroup");

    let held = lpm_engine::restore_held(&img, &opts).expect("second held restore");
    let r = held.release().expect("release");
    assert_eq!(r.root_pid, pid);
    wait_for("the released tree to count on", 5, || count(&log) >= at + 5);
    assert_eq!(status(pid, "TracerPid"), "0");
}
