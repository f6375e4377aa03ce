//! Restore ahead (lpm_engine::ahead): the target spawns the partition's
//! tree from the source's provisional description during pre-copy, and
//! the stop reuses it only when the final image's tree and layouts are
//! the same; otherwise it is discarded and the ordinary restore runs.
//! Each test checks the moved program from outside (its own checks of
//! every area it wrote, its processes) and the target's log for what
//! became of the tree spawned ahead.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::lab::{Moved, TestLab};

/// A parent and two children (each exec'd: no page shared with the
/// parent, so the tree can be spawned ahead). Every process fills an
/// area with a pattern of its own and checks it every few milliseconds,
/// writing "BAD" to the log on a difference; the parent logs "ok N" as it
/// goes. On SIGUSR1 the parent maps a new area, fills it, and forks and
/// execs a third child: the tree and the parent's layout change; on
/// SIGUSR2 it only maps the new area.
const PROG: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define LEN (1 << 20)
static volatile sig_atomic_t grow;
static void on_usr(int s) { grow = s == SIGUSR1 ? 1 : 2; }
static FILE *logf;

static unsigned char *filled(size_t len, unsigned seed) {
    unsigned char *p = mmap(0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { fprintf(logf, "BAD mmap\n"); exit(1); }
    for (size_t i = 0; i < len; i++) p[i] = (unsigned char)(i * 7 + seed);
    return p;
}

static void check(const unsigned char *p, size_t len, unsigned seed, const char *who) {
    for (size_t i = 0; i < len; i += 509)
        if (p[i] != (unsigned char)(i * 7 + seed)) { fprintf(logf, "BAD %s at %zu\n", who, i); fflush(logf); exit(1); }
}

static void child(char *self, char *log, int n) {
    char arg[16];
    snprintf(arg, sizeof arg, "%d", n);
    pid_t c = fork();
    if (c == 0) { execl(self, self, log, arg, (char *)0); _exit(127); }
}

int main(int argc, char **argv) {
    logf = fopen(argv[1], "a");
    setvbuf(logf, 0, _IOLBF, 0);
    struct timespec tick = {0, 5 * 1000 * 1000};
    if (argc > 2) {
        unsigned seed = (unsigned)atoi(argv[2]) * 31 + 5;
        unsigned char *p = filled(LEN, seed);
        for (;;) { check(p, LEN, seed, "child"); nanosleep(&tick, 0); }
    }
    signal(SIGUSR1, on_usr);
    signal(SIGUSR2, on_usr);
    unsigned char *p = filled(LEN, 3), *q = 0;
    child(argv[0], argv[1], 1);
    child(argv[0], argv[1], 2);
    fprintf(logf, "started\n");
    for (unsigned long n = 0;; n++) {
        check(p, LEN, 3, "parent");
        if (q) check(q, LEN / 4, 11, "grown");
        if (grow && !q) {
            q = filled(LEN / 4, 11);
            if (grow == 1) child(argv[0], argv[1], 3);
            fprintf(logf, "grown\n");
        }
        if (n % 100 == 0) fprintf(logf, "ok %lu\n", n);
        nanosleep(&tick, 0);
    }
}
"#;

/// Builds the program into the lab's volume and starts it in partition
/// `name` on h1; returns its log.
fn start(lab: &TestLab, name: &str) -> PathBuf {
    let src = lab.vol.join("ahead_prog.c");
    std::fs::write(&src, PROG).unwrap();
    let bin = lab.vol.join("ahead_prog");
    let st = Command::new("gcc").args(["-O1", "-Wall", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
    assert!(st.success(), "gcc failed");
    let log = lab.vol.join(format!("{name}.log"));
    let argv = vec![bin.to_string_lossy().into_owned(), log.to_string_lossy().into_owned()];
    lab.create(name, "h1", Some("128M"), &argv).unwrap();
    wait_text(&log, "ok 100", "the program never got going");
    log
}

/// Waits until the file holds `what` (the program's log only grows).
fn wait_text(path: &Path, what: &str, why: &str) -> String {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        assert!(!text.contains("BAD"), "{why}: the program found its memory wrong: {text}");
        if text.contains(what) {
            return text;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{why}: no {what:?} in its log: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The processes of the tree rooted at `pid`, itself included.
fn tree_size(pid: i32) -> usize {
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    1 + kids.split_whitespace().filter_map(|k| k.parse().ok()).map(tree_size).sum::<usize>()
}

/// The program runs on after a move and still finds every area right.
fn runs_on(log: &Path, when: &str) {
    let before = std::fs::read_to_string(log).unwrap_or_default().matches("ok ").count();
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        assert!(!text.contains("BAD"), "{when}: the program found its memory wrong: {text}");
        if text.matches("ok ").count() >= before + 2 {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "{when}: the program stopped checking itself: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How many times `host`'s log says `what`.
fn count(lab: &TestLab, host: &str, what: &str) -> usize {
    lab.log_of(host).matches(what).count()
}

/// An unchanged tree of three processes moves there and back; each time
/// the target reused the tree it spawned ahead (no process spawned in
/// the stop), and the program, checked from outside, runs on intact.
#[test]
fn an_unchanged_tree_is_reused_from_ahead() {
    let lab = TestLab::up_with("ahead", 2, &[("LPM_AHEAD", "1")]);
    let log = start(&lab, "ah");
    for to in ["h2", "h1"] {
        let before = count(&lab, to, "restore reused the tree spawned ahead");
        match lab.migrate("ah", to) {
            Moved::Completed(_) => {}
            Moved::Failed(e) => panic!("move to {to}: {e}\n{}", lab.lpmd_log_tail(to, 30)),
        }
        assert_eq!(lab.host_of("ah"), to);
        let text = lab.log_of(to);
        assert!(text.contains("tree spawned ahead"), "{to} spawned nothing ahead:\n{}", lab.lpmd_log_tail(to, 30));
        assert_eq!(
            count(&lab, to, "restore reused the tree spawned ahead"),
            before + 1,
            "{to} did not reuse the tree spawned ahead:\n{}",
            lab.lpmd_log_tail(to, 30)
        );
        assert_eq!(tree_size(lab.pid_of("ah")), 3, "after the move to {to}");
        runs_on(&log, &format!("after the move to {to}"));
    }
}

/// Starts the program, then a move to h2 that holds its stop at the
/// gate until the target spawned the tree ahead; then the program grows
/// (a new area, a new child) and the gate opens: the tree spawned ahead
/// is stale (with SIGUSR1: a new child too; SIGUSR2: the area only).
/// Returns the move's outcome.
fn move_changed(lab: &TestLab, gate: &Path, log: &Path, signal: nix::sys::signal::Signal) -> Moved {
    let mover = std::thread::scope(|sc| {
        let h = sc.spawn(|| lab.migrate("ag", "h2"));
        lab.wait_for_log("h2", "tree spawned ahead", Duration::from_secs(120));
        lab.wait_for_log("h1", "the stop waits for the test's gate", Duration::from_secs(120));
        let pid = lab.pid_of("ag");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
        wait_text(log, "grown", "after SIGUSR1");
        std::fs::write(gate, b"open").unwrap();
        h.join().expect("the move's thread")
    });
    mover
}

/// The tree changes between the provisional description and the stop
/// (a new area in the parent, a new child): the target discards what it
/// spawned ahead and restores the ordinary way, exactly (the restore's
/// read-back check passes, and the program, checked from outside, has
/// its new area and its new child and runs on).
#[test]
fn a_tree_changed_after_the_description_is_restored_exactly() {
    let gate = std::env::temp_dir().join(format!("lpm-ahead-gate-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    let lab = TestLab::up_with("aheadchg", 2, &[("LPM_AHEAD", "1"), ("LPM_TEST_GATE", gate.to_str().unwrap())]);
    let log = start(&lab, "ag");
    let outcome = move_changed(&lab, &gate, &log, nix::sys::signal::Signal::SIGUSR1);
    let _ = std::fs::remove_file(&gate);
    if let Moved::Failed(e) = outcome {
        panic!("move to h2: {e}\n{}", lab.lpmd_log_tail("h2", 30));
    }
    let text = lab.log_of("h2");
    assert!(
        text.contains("restore discarded the tree spawned ahead"),
        "h2 did not discard the stale tree:\n{}",
        lab.lpmd_log_tail("h2", 30)
    );
    assert_eq!(tree_size(lab.pid_of("ag")), 4, "the child forked before the stop is not there");
    runs_on(&log, "after the move");
}

/// The sabotage of the test above: the parent maps a new area only, and
/// the stale tree is reused with its areas unchecked (`ahead-stale`),
/// lacking the new area. The restore must catch it: the move fails, the copy on
/// the target is gone, and the program runs on at the source.
#[test]
fn a_stale_tree_reused_is_caught_by_the_read_back() {
    let gate = std::env::temp_dir().join(format!("lpm-ahead-sab-{}", std::process::id()));
    let _ = std::fs::remove_file(&gate);
    let lab = TestLab::up_with(
        "aheadsab",
        2,
        &[("LPM_AHEAD", "1"), ("LPM_TEST_GATE", gate.to_str().unwrap()), (lpm_engine::SABOTAGE_ENV, "ahead-stale")],
    );
    let log = start(&lab, "ag");
    let outcome = move_changed(&lab, &gate, &log, nix::sys::signal::Signal::SIGUSR2);
    let _ = std::fs::remove_file(&gate);
    match outcome {
        Moved::Failed(e) => println!("the sabotaged move failed as it must: {e}"),
        Moved::Completed(r) => panic!("a stale tree was restored and ran: {r}"),
    }
    assert_eq!(lab.host_of("ag"), "h1");
    lab.wait_clean("h2", Duration::from_secs(30));
    runs_on(&log, "at the source after the failed move");
}

/// A move that fails in its stop after the target spawned the tree
/// ahead: the target's puppets, pids and namespaces all go, and the
/// program runs on at the source.
#[test]
fn an_aborted_move_leaves_nothing_spawned_ahead() {
    let lab = TestLab::up_with("aheadabt", 2, &[("LPM_AHEAD", "1"), ("LPM_FAULT", "h1:source.freeze=fail")]);
    let log = start(&lab, "ab");
    match lab.migrate("ab", "h2") {
        Moved::Failed(e) => println!("the move failed as the fault makes it: {e}"),
        Moved::Completed(r) => panic!("the fault did not fire: {r}"),
    }
    // The source ends its side without waiting for the target's: the
    // target spawned the tree ahead before it read the abort, on the
    // same connection, and logs that before it destroys it.
    lab.wait_for_log("h2", "tree spawned ahead", Duration::from_secs(60));
    assert_eq!(lab.host_of("ab"), "h1");
    lab.wait_clean("h2", Duration::from_secs(30));
    runs_on(&log, "at the source after the failed move");
}

/// The target's lpmd dies (SIGKILL) at the first image file of the stop,
/// with the tree spawned ahead in its ptrace stops: the puppets die with
/// their tracer, the source runs on, and the restarted lpmd's startup
/// sweep leaves nothing of the partition on the target.
#[test]
fn a_target_dying_with_a_tree_spawned_ahead_leaves_nothing() {
    let lab = TestLab::up_with("aheadkill", 2, &[("LPM_AHEAD", "1"), ("LPM_FAULT", "h2:target.image=kill")]);
    let log = start(&lab, "ak");
    match lab.migrate("ak", "h2") {
        Moved::Failed(e) => println!("the move failed as the fault makes it: {e}"),
        Moved::Completed(r) => panic!("the fault did not fire: {r}"),
    }
    let text = lab.log_of("h2");
    assert!(text.contains("tree spawned ahead"), "h2 spawned nothing ahead:\n{text}");
    assert!(text.contains("fault injected"), "the fault did not fire:\n{text}");
    assert_eq!(lab.host_of("ak"), "h1");
    runs_on(&log, "at the source after the target died");
    lab.lab().restart("h2").expect("restart h2's lpmd");
    lab.wait_clean("h2", Duration::from_secs(30));
}
