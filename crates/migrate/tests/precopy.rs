//! Pre-copy against real running programs: a writer fills a 64 MiB buffer
//! and keeps rewriting a 4 MiB window of it while pre-copy sends its pages
//! into a page store, round after round; what the store holds is compared
//! with the program's memory read through /proc/PID/mem once it is
//! stopped.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lpm_migrate::precopy::{PageSink, Precopy, RangeSet, SinkError};
use lpm_migrate::store::Store;

const MIB: u64 = 1 << 20;
const PAGE: u64 = 4096;

/// The buffer: [0, 48 MiB) a pattern without zero pages, [48, 56) written
/// with zeros, [56, 64) never touched; the window [8, 12) is rewritten
/// every 2 ms. SIGUSR1 zeroes [0, 1 MiB) once and creates argv[2]. A
/// second area of 1 MiB is writable but not readable (process_vm_readv
/// refuses it; /proc/PID/mem reads it).
const WRITER: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#define MIB (1UL << 20)
static volatile sig_atomic_t zero;
static void on_usr1(int s) { (void)s; zero = 1; }
int main(int argc, char **argv) {
    size_t len = 64 * MIB;
    unsigned char *buf = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (buf == MAP_FAILED) return 1;
    madvise(buf, len, MADV_NOHUGEPAGE);
    for (size_t i = 0; i < 48 * MIB; i += 8) *(unsigned long *)(buf + i) = (i * 0x9e3779b97f4a7c15UL) | 1;
    memset(buf + 48 * MIB, 0, 8 * MIB);
    unsigned char *wo = mmap(0, MIB, PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (wo == MAP_FAILED) return 1;
    memset(wo, 7, MIB);
    signal(SIGUSR1, on_usr1);
    FILE *f = fopen(argv[1], "w");
    fprintf(f, "%lx %lx\n", (unsigned long)buf, (unsigned long)wo);
    fclose(f);
    for (unsigned long gen = 1;; gen++) {
        unsigned char *w = buf + 8 * MIB;
        for (size_t i = 0; i < 4 * MIB; i += 4096) {
            ((unsigned long *)(w + i))[0] = gen;
            ((unsigned long *)(w + i))[1] = i | 1;
        }
        if (zero == 1) {
            memset(buf, 0, MIB);
            zero = 2;
            fclose(fopen(argv[2], "w"));
        }
        usleep(2000);
    }
}
"#;

/// A scratch directory on tmpfs (the store needs sparse files of 128 TiB,
/// which ext4 refuses) and the programs started, all removed and killed
/// however the test ends.
struct Scene {
    dir: PathBuf,
    children: Vec<Child>,
}

impl Scene {
    fn new(tag: &str) -> Scene {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(format!("/dev/shm/lpm-migrate-test-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).unwrap();
        Scene { dir, children: Vec::new() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn cc(&self, name: &str, src: &str) -> PathBuf {
        let c = self.path(&format!("{name}.c"));
        std::fs::write(&c, src).unwrap();
        let bin = self.path(name);
        let st = Command::new("gcc").args(["-O1", "-o"]).arg(&bin).arg(&c).status().expect("run gcc");
        assert!(st.success(), "gcc failed for {name}");
        bin
    }

    /// Starts a writer; returns its pid, the buffer's address, the
    /// write-only area's address and the file it creates once zeroed.
    fn writer(&mut self, bin: &Path, tag: &str) -> (i32, u64, u64, PathBuf) {
        let (addr, zeroed) = (self.path(&format!("{tag}.addr")), self.path(&format!("{tag}.zeroed")));
        let child = Command::new(bin)
            .arg(&addr)
            .arg(&zeroed)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn writer");
        let pid = child.id() as i32;
        self.children.push(child);
        let t = Instant::now();
        let (base, wo) = loop {
            let text = std::fs::read_to_string(&addr).unwrap_or_default();
            let nums: Vec<u64> = text.split_whitespace().filter_map(|w| u64::from_str_radix(w, 16).ok()).collect();
            if text.ends_with('\n') && nums.len() == 2 {
                break (nums[0], nums[1]);
            }
            assert!(t.elapsed() < Duration::from_secs(10), "writer never started");
            std::thread::sleep(Duration::from_millis(5));
        };
        (pid, base, wo, zeroed)
    }

    /// Reaps a writer killed by the test.
    fn reap(&mut self, pid: i32) {
        let i = self.children.iter().position(|c| c.id() as i32 == pid).unwrap();
        let mut c = self.children.remove(i);
        c.wait().unwrap();
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        for c in &mut self.children {
            lpm_sys::misc::kill(c.id() as i32, libc::SIGCONT);
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn state(pid: i32) -> char {
    lpm_engine::proc::Stat::read(pid).map(|s| s.state()).unwrap_or('?')
}

/// Stops `pid` with SIGSTOP and waits until it is stopped.
fn stop(pid: i32) {
    lpm_sys::misc::kill(pid, libc::SIGSTOP);
    let t = Instant::now();
    while state(pid) != 'T' {
        assert!(t.elapsed() < Duration::from_secs(5), "pid {pid} did not stop: state {}", state(pid));
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn wait_for(path: &Path) {
    let t = Instant::now();
    while !path.exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Compares, page by page, what the store holds for `held` with the
/// memory of stopped process `pid`; returns the pages compared.
fn compare(store: &Store, pid: i32, held: &[(u64, u64)]) -> u64 {
    let mem = File::open(format!("/proc/{pid}/mem")).unwrap();
    let file = File::open(store.path(pid)).unwrap();
    let (mut a, mut b) = (vec![0u8; PAGE as usize], vec![0u8; PAGE as usize]);
    let mut n = 0;
    for &(s, e) in held {
        let mut at = s;
        while at < e {
            mem.read_exact_at(&mut a, at).unwrap_or_else(|err| panic!("read pid {pid} at {at:#x}: {err}"));
            // Past the end of the file reads nothing: a hole, zero.
            b.fill(0);
            let _ = file.read_at(&mut b, at).unwrap();
            assert!(a == b, "pid {pid}: page {at:#x} differs between the process and the store");
            at += PAGE;
            n += 1;
        }
    }
    n
}

/// The part of `held` inside `[s, e)`.
fn within(held: &[(u64, u64)], s: u64, e: u64) -> Vec<(u64, u64)> {
    RangeSet::from_ranges(held.iter().copied()).intersect(&RangeSet::from_ranges([(s, e)])).into_vec()
}

/// Whether any area of `pid` is still registered for write-protection.
fn uffd_wp_registered(pid: i32) -> bool {
    lpm_engine::proc::smaps(pid).unwrap().iter().any(|e| e.has("uw"))
}

/// Round 1 sends the whole touched buffer except its zero pages, later
/// rounds about the rewritten window, a page zeroed after it was sent is
/// sent again, and at every stop the store holds exactly the process's
/// memory for the pages pre-copy says it holds; finish sends what was
/// written after the last round, and dropping the pre-copy unregisters
/// tracking.
#[test]
fn precopy_sends_the_buffer_then_the_dirty_window() {
    let mut s = Scene::new("window");
    let bin = s.cc("writer", WRITER);
    let (pid, base, wo, zeroed) = s.writer(&bin, "w");
    let mut store = Store::create(&s.path("images")).unwrap();
    let t = Instant::now();
    let mut pc = Precopy::start(&[pid]).unwrap();
    assert!(uffd_wp_registered(pid), "tracking registered nothing");

    let r1 = pc.round(&mut store).unwrap();
    eprintln!("round 1: {r1:?} (start + round {:?})", t.elapsed());
    let pattern = 48 * MIB / PAGE;
    assert!(r1.pages >= pattern && r1.pages < pattern + 512, "round 1 sent {} pages, the pattern has {pattern}", r1.pages);
    assert!(r1.zero_skipped >= 8 * MIB / PAGE, "round 1 skipped {} zero pages, the buffer has 2048", r1.zero_skipped);
    assert_eq!(store.bytes(), r1.bytes);
    assert_eq!(r1.bytes, r1.pages * PAGE);
    let held = pc.held(pid).unwrap().clone().into_vec();
    assert_eq!(within(&held, base, base + 64 * MIB), vec![(base, base + 56 * MIB)], "held after round 1");
    assert_eq!(within(&held, wo, wo + MIB), vec![(wo, wo + MIB)], "write-only area after round 1");
    assert_eq!(r1.unreadable, 0);

    let mut later = Vec::new();
    for n in 2..=3 {
        std::thread::sleep(Duration::from_millis(50));
        let r = pc.round(&mut store).unwrap();
        eprintln!("round {n}: {r:?}");
        later.push(r);
    }
    for r in &later {
        assert!(r.pages >= 1024 && r.pages < 1024 + 128, "round {} sent {} pages, the window has 1024", r.round, r.pages);
        assert_eq!(r.zero_skipped, 0, "round {}", r.round);
    }

    // A page sent with data and zeroed since must be sent again.
    lpm_sys::misc::kill(pid, libc::SIGUSR1);
    wait_for(&zeroed);
    std::thread::sleep(Duration::from_millis(20));
    let c = pc.collect().unwrap();
    assert!(c.found >= 1024 + 256 && c.pending == c.found, "collect after zeroing: {c:?}");
    assert!(c.dirty_rate() > 0.0);
    let r4 = pc.round(&mut store).unwrap();
    assert!(r4.pages >= 1024 + 256 && r4.pages < 1024 + 256 + 128, "round 4 sent {} pages", r4.pages);

    // Stopped: a collection drops what was written since round 4, and the
    // store holds the process's memory for all the rest.
    stop(pid);
    let c = pc.collect().unwrap();
    let held = pc.held(pid).unwrap().clone().into_vec();
    assert_eq!(c.pending, pc.pending_pages());
    let n = compare(&store, pid, &held);
    assert!(n >= 52 * MIB / PAGE, "only {n} pages held");
    let outside_window = RangeSet::from_ranges([(base, base + 8 * MIB), (base + 12 * MIB, base + 56 * MIB)]);
    let h = RangeSet::from_ranges(held.iter().copied());
    assert_eq!(h.intersect(&outside_window), outside_window, "held lost pages nobody wrote");
    assert!(!h.overlaps(base + 56 * MIB, base + 64 * MIB), "untouched pages held");
    assert_eq!(compare(&store, pid, &[(base, base + MIB)]), 256, "zeroed MiB");

    // Running again, one more round, then the final stop.
    lpm_sys::misc::kill(pid, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(30));
    pc.round(&mut store).unwrap();
    std::thread::sleep(Duration::from_millis(5));
    stop(pid);
    let t = Instant::now();
    let done = pc.finish(&mut store).unwrap();
    let (last, fin): (_, HashMap<i32, Vec<(u64, u64)>>) = (done.stats, done.held);
    eprintln!("finish took {:?}, sent {} pages", t.elapsed(), last.pages);
    // The writer ran on after the round: the last round found its writes,
    // and names them.
    assert!(last.pages > 0, "the last round sent nothing");
    let named: u64 = done.last_sent[&pid].iter().map(|(s, e)| (e - s) / PAGE).sum();
    assert_eq!(named, last.pages, "the last round's ranges do not add up to its pages");
    assert_eq!(fin.keys().copied().collect::<Vec<_>>(), vec![pid]);
    let held = &fin[&pid];
    assert!(held.windows(2).all(|w| w[0].1 < w[1].0) && held.iter().all(|(s, e)| s % PAGE == 0 && e % PAGE == 0 && s < e));
    let n = compare(&store, pid, held);
    assert!(n >= 52 * MIB / PAGE, "only {n} pages held at the end");
    let file_len = std::fs::metadata(store.path(pid)).unwrap().len();
    assert!(held.last().unwrap().1 <= file_len, "held pages past the end of the store's file ({file_len:#x}): {held:x?}");
    let h = RangeSet::from_ranges(held.iter().copied());
    assert_eq!(h.intersect(&outside_window), outside_window);
    assert!(uffd_wp_registered(pid), "finish unregistered the areas inside the stop");
    drop(pc);
    assert!(!uffd_wp_registered(pid), "dropping the pre-copy left areas registered");
    assert_eq!(compare(&store, pid, &[(wo, wo + MIB)]), 256, "write-only area");
    // The write-protect markers on untouched pages are gone with the
    // trackers: the checkpoint that follows must not see them as swapped.
    let mut pm = lpm_sys::pagemap::Pagemap::open(pid).unwrap();
    let mut regions = Vec::new();
    let q = lpm_sys::pagemap::Query {
        flags: 0,
        category_mask: 0,
        anyof_mask: (lpm_sys::pagemap::PAGE_IS_SWAPPED | lpm_sys::pagemap::PAGE_IS_PRESENT) as u64,
        return_mask: lpm_sys::pagemap::PAGE_IS_SWAPPED as u64,
    };
    pm.scan(base + 56 * MIB, base + 64 * MIB, q, &mut regions).unwrap();
    assert_eq!(regions, vec![], "untouched pages look present or swapped after finish");
    lpm_sys::misc::kill(pid, libc::SIGCONT);
    std::thread::sleep(Duration::from_millis(20));
    assert!(matches!(state(pid), 'S' | 'R'), "writer state {} after finish", state(pid));
}

/// A process that exits during pre-copy is dropped (as a zombie first,
/// then reaped) and, reaped, has no entry in the result; dropping a Precopy
/// unregisters tracking and the program runs on.
#[test]
fn exited_processes_are_skipped_and_drop_unregisters() {
    let mut s = Scene::new("exit");
    let bin = s.cc("writer", WRITER);
    let (a, base_a, _, _) = s.writer(&bin, "a");
    let (b, _, _, _) = s.writer(&bin, "b");
    let mut store = Store::create(&s.path("images")).unwrap();
    let mut pc = Precopy::start(&[a, b]).unwrap();
    let r1 = pc.round(&mut store).unwrap();
    assert!(r1.pages >= 2 * 48 * MIB / PAGE, "round 1 sent {} pages for two writers", r1.pages);
    assert_eq!(store.pids(), vec![a.min(b), a.max(b)]);

    lpm_sys::misc::kill(b, libc::SIGKILL);
    let t = Instant::now();
    while state(b) != 'Z' {
        assert!(t.elapsed() < Duration::from_secs(5), "pid {b} did not die");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    let r2 = pc.round(&mut store).unwrap();
    assert!(r2.pages >= 1024 && r2.pages < 1024 + 128, "round 2 with a zombie sent {} pages", r2.pages);
    s.reap(b);
    pc.round(&mut store).unwrap();
    assert_eq!(pc.pids(), vec![a]);
    assert_eq!(pc.exited(), &[b]);
    stop(a);
    let fin = pc.finish(&mut store).unwrap().held;
    drop(pc);
    assert_eq!(fin.keys().copied().collect::<Vec<_>>(), vec![a]);
    assert!(compare(&store, a, &fin[&a]) >= 52 * MIB / PAGE);
    lpm_sys::misc::kill(a, libc::SIGCONT);

    // Abort: dropping the Precopy leaves the writer untracked and running.
    let mut pc = Precopy::start(&[a]).unwrap();
    pc.round(&mut store).unwrap();
    assert!(uffd_wp_registered(a));
    assert!(within(&pc.held(a).unwrap().clone().into_vec(), base_a, base_a + 64 * MIB).len() <= 2);
    drop(pc);
    assert!(!uffd_wp_registered(a), "drop left areas registered");
    std::thread::sleep(Duration::from_millis(20));
    assert!(matches!(state(a), 'S' | 'R'), "writer state {} after drop", state(a));
}

/// The source's loop as lpmd runs it: rounds measured into the policy
/// until it decides to switch over; a 4 MiB working set sent at the store's
/// speed fits 50 ms, so that comes within a few rounds.
#[test]
fn policy_loop_switches_over_on_a_small_working_set() {
    use lpm_migrate::policy::{decide, Decision, Limits, Measure};
    let mut s = Scene::new("loop");
    let bin = s.cc("writer", WRITER);
    let (pid, _, _, _) = s.writer(&bin, "w");
    let mut store = Store::create(&s.path("images")).unwrap();
    let start = Instant::now();
    let mut pc = Precopy::start(&[pid]).unwrap();
    let limits = Limits::default();
    let mut history = Vec::new();
    let decision = loop {
        let st = pc.round(&mut store).unwrap();
        let c = pc.collect().unwrap();
        history.push(c.pending);
        let m = Measure {
            round: st.round,
            remaining: c.pending,
            sent_last: st.pages,
            dirty_rate: c.dirty_rate(),
            bandwidth: st.bytes as f64 / st.duration.as_secs_f64().max(1e-6),
            elapsed: start.elapsed(),
            throttle: 0.0,
            rounds_at_throttle: st.round,
            history: history.clone(),
            untracked: c.untracked,
        };
        let d = decide(&m, &limits);
        eprintln!("{st:?} -> {c:?} -> {d:?}");
        if d != Decision::Continue {
            break d;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(decision, Decision::Switchover);
    assert!(pc.rounds() <= 5, "took {} rounds", pc.rounds());
    stop(pid);
    let fin = pc.finish(&mut store).unwrap().held;
    assert!(compare(&store, pid, &fin[&pid]) >= 50 * MIB / PAGE);
}

/// 32 threads that sleep: 256 MiB of thread stacks, almost all untouched.
const SLEEPERS: &str = r#"
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static void *sleeper(void *a) { (void)a; for (;;) pause(); return 0; }
int main(int argc, char **argv) {
    pthread_t t;
    for (int i = 0; i < 32; i++) pthread_create(&t, 0, sleeper, 0);
    FILE *f = fopen(argv[1], "w");
    fprintf(f, "0 0\n");
    fclose(f);
    for (;;) pause();
}
"#;

/// The switchover's checkpoint runs with the trackers still registered (they
/// go after the handover): it must not take the untouched pages of tracked
/// areas for pages to save, as write-protect markers on them would look
/// swapped out.
#[test]
fn checkpoint_with_live_trackers_saves_no_untouched_pages() {
    let mut s = Scene::new("sleepers");
    let src = s.path("sleepers.c");
    std::fs::write(&src, SLEEPERS).unwrap();
    let bin = s.path("sleepers");
    let st = Command::new("gcc").args(["-O1", "-pthread", "-o"]).arg(&bin).arg(&src).status().expect("run gcc");
    assert!(st.success(), "gcc failed for sleepers");
    let (pid, _, _, _) = s.writer(&bin, "sleepers");
    let mut store = Store::create(&s.path("store")).unwrap();
    let mut pc = Precopy::start(&[pid]).unwrap();
    let r1 = pc.round(&mut store).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    pc.round(&mut store).unwrap();
    let stopped = lpm_engine::stop_tree(pid).expect("stop the sleepers");
    let held = pc.finish(&mut store).unwrap().held;
    let img = s.path("img");
    let stats = stopped.dump(&img, &lpm_engine::DumpOptions { precopied: held, ..Default::default() }).expect("checkpoint");
    drop(pc);
    eprintln!("round 1: {r1:?}; checkpoint: {stats:?}");
    assert!(stats.pages < 1024, "the checkpoint saved {} pages of a process with {} present", stats.pages, r1.pages);
    assert!(stats.zero_pages < 1024, "the checkpoint took {} untouched pages for zero pages", stats.zero_pages);
    let size: u64 = std::fs::read_dir(&img).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
    assert!(size < 16 * MIB, "the image is {size} bytes long");
}

/// One of several sinks sharing a store, as the target's streams do;
/// counts the pages it got.
struct Shared<'a> {
    store: &'a Mutex<Store>,
    pages: u64,
}

impl PageSink for Shared<'_> {
    fn pages(&mut self, pid: i32, vaddr: u64, data: &[u8]) -> Result<(), SinkError> {
        self.pages += data.len() as u64 / PAGE;
        self.store.lock().unwrap().write(pid, vaddr, data).map_err(Into::into)
    }
}

/// Rounds over three sinks at once send what one sink would, each sink
/// a share, and the store holds the process's memory for every page
/// pre-copy says it holds.
#[test]
fn parallel_rounds_share_the_pages_and_hold_the_same() {
    let mut s = Scene::new("parallel");
    let bin = s.cc("writer", WRITER);
    let (pid, base, wo, _) = s.writer(&bin, "p");
    let store = Mutex::new(Store::create(&s.path("images")).unwrap());
    let mut pc = Precopy::start(&[pid]).unwrap();
    let mut sinks: Vec<Shared> = (0..3).map(|_| Shared { store: &store, pages: 0 }).collect();
    let round = |pc: &mut Precopy, sinks: &mut Vec<Shared>| {
        let mut refs: Vec<&mut (dyn PageSink + Send)> = sinks.iter_mut().map(|s| s as &mut (dyn PageSink + Send)).collect();
        pc.round_parallel(&mut refs).unwrap()
    };
    let r1 = round(&mut pc, &mut sinks);
    eprintln!("round 1: {r1:?}, per sink {:?}", sinks.iter().map(|s| s.pages).collect::<Vec<_>>());
    let pattern = 48 * MIB / PAGE;
    assert!(r1.pages >= pattern && r1.pages < pattern + 512, "round 1 sent {} pages, the pattern has {pattern}", r1.pages);
    assert!(r1.zero_skipped >= 8 * MIB / PAGE, "round 1 skipped {} zero pages, the buffer has 2048", r1.zero_skipped);
    assert_eq!(sinks.iter().map(|s| s.pages).sum::<u64>(), r1.pages);
    // A third of what is present each; zero pages are skipped, so a share
    // may send less.
    assert!(sinks.iter().all(|s| s.pages >= r1.pages / 6), "unbalanced shares: {:?}", sinks.iter().map(|s| s.pages).collect::<Vec<_>>());
    let held = pc.held(pid).unwrap().clone().into_vec();
    assert_eq!(within(&held, base, base + 64 * MIB), vec![(base, base + 56 * MIB)], "held after round 1");
    assert_eq!(within(&held, wo, wo + MIB), vec![(wo, wo + MIB)], "write-only area after round 1");

    std::thread::sleep(Duration::from_millis(50));
    let r2 = round(&mut pc, &mut sinks);
    assert!(r2.pages >= 1024 && r2.pages < 1024 + 128, "round 2 sent {} pages, the window has 1024", r2.pages);

    stop(pid);
    pc.collect().unwrap();
    let held = pc.held(pid).unwrap().clone().into_vec();
    let n = compare(&store.lock().unwrap(), pid, &held);
    assert!(n >= 52 * MIB / PAGE, "only {n} pages held");
    lpm_sys::misc::kill(pid, libc::SIGCONT);
}

/// Eight written pages of a MAP_DROPPABLE area, which no userfaultfd
/// takes, then nothing more: argv[1] gets the address.
const DROPPABLE: &str = r#"
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
int main(int argc, char **argv) {
    unsigned char *d = mmap(0, 8 * 4096, PROT_READ | PROT_WRITE, MAP_DROPPABLE | MAP_ANONYMOUS, -1, 0);
    if (d == MAP_FAILED) return 1;
    memset(d, 5, 8 * 4096);
    FILE *f = fopen(argv[1], "w");
    fprintf(f, "%lx %lx\n", (unsigned long)d, (unsigned long)d);
    fclose(f);
    for (;;) pause();
}
"#;

/// The pages of an area no tracker follows are pending after every
/// collection, counted as untracked; the policy, which cannot wait them
/// away, switches over once they are all that is left, however slow the
/// stop would move them (a loaded host never fit them in the budget, and
/// the round limit aborted the migration of an idle program).
#[test]
fn untracked_pages_are_counted_and_do_not_hold_the_switchover() {
    use lpm_migrate::policy::{decide, Decision, Limits, Measure};
    let mut s = Scene::new("untracked");
    let bin = s.cc("droppable", DROPPABLE);
    let (pid, _, _, _) = s.writer(&bin, "d");
    let mut store = Store::create(&s.path("images")).unwrap();
    let mut pc = Precopy::start(&[pid]).unwrap();
    let mut history = Vec::new();
    for round in 1..=3 {
        let st = pc.round(&mut store).unwrap();
        let c = pc.collect().unwrap();
        assert_eq!((c.untracked, c.pending), (8, 8), "round {round}: the droppable area's pages, and nothing else, are pending");
        history.push(c.pending);
        let m = Measure {
            round: st.round,
            remaining: c.pending,
            sent_last: st.pages,
            // A page a second: the pages alone would never fit.
            bandwidth: PAGE as f64,
            history: history.clone(),
            untracked: c.untracked,
            ..Default::default()
        };
        assert_eq!(decide(&m, &Limits::default()), Decision::Switchover, "round {round}: {m:?}");
    }
}

/// A MAP_SHARED anonymous area of 8 MiB (its first 4 MiB filled, the rest
/// never touched) and a SysV segment of 4 MiB (its first 2 MiB filled),
/// shared by the program and its child, which rewrites [1, 2) MiB of the
/// area and [0, 1) MiB of the segment every 2 ms. Writes the area's and the
/// segment's addresses and the child's pid to argv[1]. On SIGUSR1 the
/// program forks a child that writes a page of the area and exits, reaps
/// it and creates argv[1].forked.
const SHARER: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <unistd.h>
#define MIB (1UL << 20)
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }
int main(int argc, char **argv) {
    signal(SIGUSR1, on_usr1);
    unsigned char *a = mmap(0, 8 * MIB, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    int id = shmget(IPC_PRIVATE, 4 * MIB, IPC_CREAT | 0600);
    unsigned char *s = shmat(id, 0, 0);
    if (a == MAP_FAILED || s == (void *)-1) return 1;
    shmctl(id, IPC_RMID, 0);
    for (size_t i = 0; i < 4 * MIB; i += 8) *(unsigned long *)(a + i) = (i * 0x9e3779b97f4a7c15UL) | 1;
    for (size_t i = 0; i < 2 * MIB; i += 8) *(unsigned long *)(s + i) = (i * 0x2545f4914f6cdd1dUL) | 1;
    pid_t c = fork();
    if (c == 0) {
        for (unsigned long gen = 1;; gen++) {
            for (size_t i = 0; i < MIB; i += 4096) {
                ((unsigned long *)(a + MIB + i))[0] = gen;
                ((unsigned long *)(s + i))[1] = gen;
            }
            usleep(2000);
        }
    }
    FILE *f = fopen(argv[1], "w");
    fprintf(f, "%lx %lx %d\n", (unsigned long)a, (unsigned long)s, (int)c);
    fclose(f);
    for (;;) {
        pause();
        if (go) {
            go = 0;
            pid_t k = fork();
            if (k == 0) {
                a[5 * MIB] = 9;
                _exit(0);
            }
            waitpid(k, 0, 0);
            char done[4096];
            snprintf(done, sizeof done, "%s.forked", argv[1]);
            fclose(fopen(done, "w"));
        }
    }
}
"#;

/// Starts the sharer; returns its pid, its child's, and the area's and the
/// segment's addresses.
fn sharer(s: &mut Scene, bin: &Path, tag: &str) -> (i32, i32, u64, u64) {
    let addr = s.path(&format!("{tag}.addr"));
    let child = Command::new(bin).arg(&addr).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let pid = child.id() as i32;
    s.children.push(child);
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(&addr).unwrap_or_default();
        let w: Vec<&str> = text.split_whitespace().collect();
        if text.ends_with('\n') && w.len() == 3 {
            return (pid, w[2].parse().unwrap(), u64::from_str_radix(w[0], 16).unwrap(), u64::from_str_radix(w[1], 16).unwrap());
        }
        assert!(t.elapsed() < Duration::from_secs(10), "sharer never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The object mapped at `addr` in `pid`, opened through map_files.
fn object_at(pid: i32, addr: u64) -> (File, lpm_engine::ShmRef) {
    let maps = lpm_engine::proc::maps(pid).unwrap();
    let e = maps.iter().find(|e| e.start == addr).unwrap();
    let r = lpm_engine::shm_object(e).unwrap_or_else(|| panic!("{addr:#x} of pid {pid} is not a tracked object: {e:?}"));
    (File::open(format!("/proc/{pid}/map_files/{:x}-{:x}", e.start, e.end)).unwrap(), r)
}

/// Compares what the store holds for an object's held ranges with the
/// object; returns the pages compared.
fn compare_object(dir: &Path, object: &File, file: &str, held: &[(u64, u64)]) -> u64 {
    let stored = File::open(dir.join(file)).unwrap();
    let (mut a, mut b) = (vec![0u8; PAGE as usize], vec![0u8; PAGE as usize]);
    let mut n = 0;
    for &(s, e) in held {
        for at in (s..e).step_by(PAGE as usize) {
            object.read_exact_at(&mut a, at).unwrap();
            b.fill(0);
            let _ = stored.read_at(&mut b, at).unwrap();
            assert!(a == b, "{file}: page {at:#x} differs between the object and the store");
            n += 1;
        }
    }
    n
}

/// Two processes sharing a MAP_SHARED anonymous area and a SysV segment,
/// one rewriting part of each: pre-copy sends both objects in its rounds
/// (round 1 their data, not their holes), and at the stop the store holds
/// every page it says it holds, as the objects hold it. A write through a
/// file opened on the area's object sends that object whole into the stop
/// (nothing held for it); a process forked, or a tracked process that
/// exits, during pre-copy sends every object again in the next round.
#[test]
fn shared_objects_go_in_the_rounds_and_what_no_page_table_sees_spoils_them() {
    let mut s = Scene::new("shm");
    let bin = s.cc("sharer", SHARER);
    let (p, c, area, seg) = sharer(&mut s, &bin, "a");
    let images = s.path("images");
    let (area_file, area_ref) = object_at(p, area);
    let (seg_file, seg_ref) = object_at(p, seg);
    assert!(seg_ref.sysv && !area_ref.sysv);

    let mut store = Store::create(&images).unwrap();
    let mut pc = Precopy::start(&[p, c]).unwrap();
    let r1 = pc.round(&mut store).unwrap();
    // 4 MiB of the area and 2 MiB of the segment, not their holes.
    assert!(r1.pages >= 6 * MIB / PAGE && r1.pages < 6 * MIB / PAGE + 64, "round 1 sent {} pages", r1.pages);
    std::thread::sleep(Duration::from_millis(50));
    let r2 = pc.round(&mut store).unwrap();
    assert!(r2.pages >= 256, "round 2 sent {} pages: the child's writes were not seen", r2.pages);
    stop(p);
    stop(c);
    let fin = pc.finish(&mut store).unwrap();
    drop(pc);
    assert_eq!(fin.shm.len(), 2, "{:?}", fin.shm.keys());
    let (a, g) = (&fin.shm[&area_ref], &fin.shm[&seg_ref]);
    assert!(compare_object(&images, &area_file, &a.file, &a.ranges) >= 4 * MIB / PAGE);
    assert!(compare_object(&images, &seg_file, &g.file, &g.ranges) >= 2 * MIB / PAGE);
    lpm_sys::misc::kill(c, libc::SIGCONT);
    lpm_sys::misc::kill(p, libc::SIGCONT);

    // A write through a file opened on the area's object: the area goes
    // whole, the segment is still held.
    let mut store = Store::create(&s.path("images2")).unwrap();
    let mut pc = Precopy::start(&[p, c]).unwrap();
    pc.round(&mut store).unwrap();
    let rw = std::fs::OpenOptions::new().write(true).open(format!("/proc/{p}/map_files/{:x}-{:x}", area, area + 8 * MIB)).unwrap();
    rw.write_all_at(b"x", 3 * MIB).unwrap();
    pc.round(&mut store).unwrap();
    stop(p);
    stop(c);
    let fin = pc.finish(&mut store).unwrap();
    drop(pc);
    assert_eq!(fin.shm.keys().copied().collect::<Vec<_>>(), vec![seg_ref], "a write through a file did not spoil the area");
    lpm_sys::misc::kill(c, libc::SIGCONT);
    lpm_sys::misc::kill(p, libc::SIGCONT);

    // A process forked during pre-copy writes and is gone before the
    // next look: only the fork tells, and the next round sends the
    // objects again, so the store holds what it wrote.
    let images4 = s.path("images4");
    let mut store = Store::create(&images4).unwrap();
    let mut pc = Precopy::start(&[p, c]).unwrap();
    pc.round(&mut store).unwrap();
    lpm_sys::misc::kill(p, libc::SIGUSR1);
    wait_for(&s.path("a.addr.forked"));
    let r = pc.round(&mut store).unwrap();
    assert!(r.pages >= 4 * MIB / PAGE, "the round after the fork sent {} pages, not the objects again", r.pages);
    stop(p);
    stop(c);
    let fin = pc.finish(&mut store).unwrap();
    drop(pc);
    assert_eq!(fin.shm.len(), 2, "objects not held after a fork during pre-copy: {:?}", fin.shm.keys());
    let a = &fin.shm[&area_ref];
    assert!(a.ranges.iter().any(|&(s, e)| s <= 5 * MIB && 5 * MIB < e), "the page the child wrote is not held: {:?}", a.ranges);
    compare_object(&images4, &area_file, &a.file, &a.ranges);
    lpm_sys::misc::kill(c, libc::SIGCONT);
    lpm_sys::misc::kill(p, libc::SIGCONT);

    // A tracked process exits: its mappings went away with what it wrote
    // through them since the last look, so their whole ranges are sent
    // again; what the store holds is still the objects' content.
    let images3 = s.path("images3");
    let mut store = Store::create(&images3).unwrap();
    let mut pc = Precopy::start(&[p, c]).unwrap();
    pc.round(&mut store).unwrap();
    lpm_sys::misc::kill(c, libc::SIGKILL);
    let t = Instant::now();
    while state(c) != 'Z' {
        assert!(t.elapsed() < Duration::from_secs(5), "pid {c} did not die");
        std::thread::sleep(Duration::from_millis(1));
    }
    let r = pc.round(&mut store).unwrap();
    assert!(r.pages >= 4 * MIB / PAGE, "the round after the exit sent {} pages, not the writer's whole mappings again", r.pages);
    stop(p);
    let fin = pc.finish(&mut store).unwrap();
    drop(pc);
    if let Some(a) = fin.shm.get(&area_ref) {
        compare_object(&images3, &area_file, &a.file, &a.ranges);
    }
    if let Some(g) = fin.shm.get(&seg_ref) {
        compare_object(&images3, &seg_file, &g.file, &g.ranges);
    }
    assert!(fin.held.get(&c).is_none_or(|r| r.is_empty()), "the exited writer holds pages: {:?}", fin.held.get(&c));
    lpm_sys::misc::kill(p, libc::SIGCONT);
}
