//! Programs live-migrated between the hosts of a lab (`lpm lab up`), each
//! in a partition of its own, and checked after the moves:
//!
//! - `zdtm_programs_move_there_and_back`: every zdtm program
//!   (`tests/zdtm/`, the table in `common/zdtm_progs.rs`) runs in a
//!   partition on h1, started the way the checkpoint runner starts it
//!   (under `unshare` for the programs that own namespaces), is migrated
//!   h1 → h2 → h1, then gets SIGTERM (the init, or for `Term::OnlyChild`
//!   its only child) and must write PASS. The programs whose migration is
//!   refused by design are listed in [`REFUSED`] with the reason: their
//!   first migration must fail naming the cause, leave the partition
//!   running on h1, and the program must still PASS there. Those that
//!   cannot start in a partition at all would be in [`CANNOT_START`]
//!   (none now: sched_rt gets a real-time budget, [`RT_BUDGET`]). The programs
//!   are spread over [`ZDTM_LABS`] labs that run side by side, several
//!   partitions per lab. The test prints one table of every program.
//! - redis-server, the 64-thread C program of `real.rs`, the Python kv
//!   service of the demo and `python3 -m http.server`, each moved
//!   h1 → h2 → h1 with its state checked from outside (DEBUG DIGEST, a
//!   connection held open, counters, a client checking every answer).
//!
//! Every moved program must show, after every move, that it does new
//! work, not only that it kept its state: new_work (the zdtm program that
//! does a round of new work on request) does a round; redis forks for a
//! BGSAVE and takes new connections; the 64-thread program creates a new
//! thread for every line it logs; the kv service answers new requests;
//! http.server answers fresh requests (a thread each) from the client
//! namespace; a shell loop goes on forking and running commands (it forks
//! all through its moves too).
//! - `kv_service_twenty_migrations_under_load`: 20 migrations in a row of
//!   one partition while its client keeps asking; the test prints each
//!   downtime and the client's longest wait.
//!
//! Every partition's files (work dirs, logs, redis' dir) live in the lab's
//! volume directory, passed with `--volume`; the lab and that directory go
//! away however the test ends (`LPM_LAB_KEEP=1` keeps the files).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

mod common;
use common::lab::{Moved, TestLab};
use common::pg::Pg;
use common::zdtm_progs::{self, Prog, Term, PROGS, SOCK_OUTSIDE};

const SERVICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/kv_service.py");
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/kv_client.py");

/// Labs the zdtm programs are spread over (they run side by side).
const ZDTM_LABS: usize = 3;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const RESULT_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Programs whose migration is broken today, with what goes wrong. They
/// still run, their failure is printed in the table, and the test fails
/// the day one of them passes, so the list cannot go stale. Every one is
/// an open bug of the migration, not a limit by design.
const KNOWN_BROKEN: &[(&str, &str)] = &[];

/// The zdtm programs whose migration out of a partition is refused, with
/// the text the refusal must contain and why it is refused. Every other
/// program of `PROGS` (and none is left out) must move h1 → h2 → h1 and
/// pass.
const REFUSED: &[(&str, &str, &str)] = &[(
    "sock_outside",
    "outside the tree",
    "its unix socket is connected to a listener of the test, outside the partition: the peer cannot move with it",
)];

/// The zdtm programs that cannot start in a partition as the hosts make
/// partitions, with the text of their setup failure (in the console) and
/// why. They run in the checkpoint runner (zdtm.rs); here they must fail
/// to start that way, and the test fails the day one starts: it must then
/// move like the others.
const CANNOT_START: &[(&str, &str, &str)] = &[];

/// The zdtm programs whose partition is given a real-time budget
/// (`--rt-runtime-us`, microseconds of each second): without one, no
/// thread in a partition can be made SCHED_FIFO or SCHED_RR where the
/// kernel budgets real-time time per cgroup (cgroup v1's cpu controller).
const RT_BUDGET: &[(&str, &str)] = &[("sched_rt", "100000")];

/// The zdtm programs that need capabilities beyond a partition's default
/// set (lpm_host::isolation::DEFAULT_CAPS) to make the state they test:
/// they run with `--cap-add ALL`, as do those started under `unshare`
/// (CAP_SYS_ADMIN). The others run with the default set, as any partition.
const ALL_CAPS: &[&str] = &[
    "fanotify",          // fanotify_init (CAP_SYS_ADMIN)
    "mem_cow",           // page frames in /proc/self/pagemap (CAP_SYS_ADMIN)
    "mem_cow_wide",      // page frames in /proc/self/pagemap (CAP_SYS_ADMIN)
    "mem_hugetlb",       // /proc/self/map_files (CAP_CHECKPOINT_RESTORE)
    "mem_hugetlb_memfd", // the same
    "mem_shmem_private", // the same
    "sched_policy",      // SCHED_IDLE and nice below 0 (CAP_SYS_NICE)
    "sched_rt",          // SCHED_FIFO (CAP_SYS_NICE)
    "sock_filter",       // SO_LOCK_FILTER and friends
    "mount_masks",       // a mount namespace of its own (CAP_SYS_ADMIN)
];

/// What a zdtm program is expected to do in a partition.
#[derive(Clone, Copy)]
enum Expect {
    /// Moves h1 → h2 → h1 and passes.
    Pass,
    /// The first migration fails with an error containing `error`.
    Refused { error: &'static str, why: &'static str },
    /// It fails its setup in a partition, its console showing `error`.
    CannotStart { error: &'static str, why: &'static str },
}

fn expectation(name: &str) -> Expect {
    if let Some(&(_, error, why)) = CANNOT_START.iter().find(|r| r.0 == name) {
        return Expect::CannotStart { error, why };
    }
    REFUSED.iter().find(|r| r.0 == name).map_or(Expect::Pass, |&(_, error, why)| Expect::Refused { error, why })
}

/// The test's own namespaces, for ns_tree and sock_netns to compare with.
fn outer_ns() -> String {
    ["mnt", "net", "uts", "ipc", "pid"]
        .iter()
        .map(|k| {
            let ino = std::fs::metadata(format!("/proc/self/ns/{k}")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
            format!("{k}:{ino}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The children of `pid` (all its threads').
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(kids.split_whitespace().filter_map(|w| w.parse::<i32>().ok()));
    }
    out
}

/// Whether process `pid` exists and is not a zombie.
fn running(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rfind(')').and_then(|i| stat.get(i + 2..i + 3)).is_some_and(|state| state != "Z")
}

/// The tasks of partition `name` under a host's agent that are blocked
/// where a restore should never block (a userfault, a ptrace stop,
/// uninterruptible sleep), with the syscall they are in: what a stuck
/// migration target left behind.
fn stuck_under(lab: &TestLab, host: &str, name: &str) -> String {
    let Some(lpmd) = lab.lpmd_pid(host) else { return String::new() };
    let cgroup = format!("/{host}/{name}");
    let mut out = String::new();
    for pid in common::tree_of(lpmd).into_iter().filter(|&p| p != lpmd) {
        let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        if !cg.lines().any(|l| l.ends_with(&cgroup)) {
            continue;
        }
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            let tid = t.file_name().to_string_lossy().into_owned();
            let read = |f: &str| std::fs::read_to_string(t.path().join(f)).unwrap_or_default();
            let stat = read("stat");
            let state = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next()).unwrap_or('?');
            let wchan = read("wchan");
            if wchan == "handle_userfault" || matches!(state, 't' | 'T' | 'D') {
                let syscall = read("syscall");
                let _ = writeln!(
                    out,
                    "  pid {pid} tid {tid} ({}) state {state} wchan {wchan} syscall {}",
                    read("comm").trim(),
                    syscall.split_whitespace().next().unwrap_or("?")
                );
            }
        }
    }
    out
}

/// Each process of the tree rooted at `pid`: state, wait channel and
/// syscall, for a program that does not answer.
fn tree_states(pid: i32) -> String {
    let mut out = String::new();
    for p in common::tree_of(pid) {
        let read = |f: &str| std::fs::read_to_string(format!("/proc/{p}/{f}")).unwrap_or_default();
        let stat = read("stat");
        let state = stat.rfind(')').and_then(|i| stat[i + 2..].chars().next()).unwrap_or('?');
        let _ = writeln!(
            out,
            "  pid {p} ({}) state {state} wchan {} syscall {}",
            read("comm").trim(),
            read("wchan"),
            read("syscall").split_whitespace().next().unwrap_or("?")
        );
    }
    out
}

/// Migrates and returns the report, or fails the test with lpm's error,
/// the target agent's log and the tasks left stuck under it.
fn moved(lab: &TestLab, name: &str, to: &str) -> serde_json::Value {
    match lab.migrate(name, to) {
        Moved::Completed(r) => r,
        Moved::Failed(e) => panic!(
            "migrating {name} to {to} failed: {e}\n{to}'s agent log:\n{}\ntasks stuck under {to}'s agent:\n{}",
            lab.lpmd_log_tail(to, 10),
            stuck_under(lab, to, name)
        ),
    }
}

/// The last `n` lines of a text.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ------------------------------------------------------------ zdtm programs

/// One zdtm program in a partition, and what became of it.
struct ZRun {
    prog: &'static Prog,
    expect: Expect,
    /// The partition's name.
    name: String,
    /// The program's work dir (its cwd), in the lab's volume.
    work: PathBuf,
    started: bool,
    /// The migrations, as the table shows them.
    hops: Vec<String>,
    verdict: String,
    /// Everything that went against the expectation, with details.
    problems: Vec<String>,
    /// The run's ZDTM_RUN value, which names what it leaves in /dev/shm.
    marker: String,
    /// Huge pages held for the program (`Need::HugePages`) until the run
    /// is dropped, after its lab.
    huge: Option<common::hugepages::HugePages>,
}

impl Drop for ZRun {
    fn drop(&mut self) {
        // posix_shm names its object after the run and unlinks it only
        // when it passes: a failed or killed run would leave it.
        if !self.marker.is_empty() {
            let _ = std::fs::remove_file(format!("/dev/shm/lpm-zdtm-shm-{}", self.marker));
        }
    }
}

impl ZRun {
    fn new(prog: &'static Prog, lab: &TestLab) -> ZRun {
        let name = format!("z-{}", prog.name.replace('_', "-"));
        let work = lab.vol.join(format!("work-{}", prog.name));
        ZRun {
            prog,
            expect: expectation(prog.name),
            name,
            work,
            started: false,
            hops: Vec::new(),
            verdict: "-".into(),
            problems: Vec::new(),
            marker: String::new(),
            huge: None,
        }
    }

    fn result_path(&self) -> PathBuf {
        self.work.join("result")
    }

    fn console(&self, lab: &TestLab) -> String {
        format!("console of {}:\n{}", self.name, tail(&lab.logs(&self.name), 15))
    }

    /// Starts the program as the partition's init (or under `unshare`, as
    /// the checkpoint runner does) in its work dir, with the zdtm
    /// environment.
    fn start(&mut self, lab: &TestLab, bin: Option<&Path>, outer: &str, listeners: &mut Vec<UnixListener>) -> Result<(), String> {
        zdtm_progs::check_needs(self.prog)?;
        self.huge = zdtm_progs::reserve_needs(self.prog, false)?;
        std::fs::create_dir_all(&self.work).map_err(|e| format!("create {}: {e}", self.work.display()))?;
        // Programs may drop privileges (creds) and still write their files.
        std::fs::set_permissions(&self.work, std::fs::Permissions::from_mode(0o777)).map_err(|e| format!("chmod: {e}"))?;
        if self.prog.name == SOCK_OUTSIDE.name {
            let path = self.work.join("outside.sock");
            listeners.push(UnixListener::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))?);
        }
        let w = |p: &str| self.work.join(p).to_string_lossy().into_owned();
        let marker = format!("{}-{}", lab.root.file_name().unwrap_or_default().to_string_lossy(), self.prog.name);
        self.marker = marker.clone();
        let mut argv: Vec<String> = vec![
            "env".into(),
            "-C".into(),
            self.work.to_string_lossy().into_owned(),
            "LC_ALL=C".into(),
            "PYTHONDONTWRITEBYTECODE=1".into(),
            format!("ZDTM_READY={}", w("ready")),
            format!("ZDTM_RESULT={}", w("result")),
            format!("ZDTM_RUN={marker}"),
            format!("ZDTM_OUTER_NS={outer}"),
        ];
        argv.extend(zdtm_progs::argv(self.prog, bin)?);
        let mut extra: Vec<&str> = RT_BUDGET.iter().filter(|r| r.0 == self.prog.name).flat_map(|r| ["--rt-runtime-us", r.1]).collect();
        let unshared = !matches!(self.prog.launch, zdtm_progs::Launch::C | zdtm_progs::Launch::Python | zdtm_progs::Launch::Shell);
        if unshared || ALL_CAPS.contains(&self.prog.name) {
            extra.extend(["--cap-add", "ALL"]);
        }
        lab.create_with(&self.name, "h1", None, &extra, &argv)?;
        self.started = true;
        Ok(())
    }

    fn wait_ready(&mut self, lab: &TestLab) -> Result<(), String> {
        let t = Instant::now();
        let mut checked = Instant::now();
        loop {
            if std::fs::read_to_string(self.work.join("ready")).is_ok_and(|s| s == "ready\n") {
                return Ok(());
            }
            if checked.elapsed() > Duration::from_secs(1) {
                checked = Instant::now();
                let state = lab.state_of(&self.name);
                if state != "running" {
                    return Err(format!("the partition is {state} before ready; {}", self.console(lab)));
                }
            }
            if t.elapsed() > READY_TIMEOUT {
                return Err(format!("not ready within {READY_TIMEOUT:?}; {}", self.console(lab)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// h1 → h2 → h1, or the one refused migration.
    fn migrate(&mut self, lab: &TestLab) {
        let hops: &[&str] = match self.expect {
            Expect::Pass => &["h2", "h1"],
            Expect::Refused { .. } => &["h2"],
            Expect::CannotStart { .. } => &[],
        };
        for &to in hops {
            let from = lab.host_of(&self.name);
            match (lab.migrate(&self.name, to), self.expect) {
                (Moved::Completed(r), Expect::Pass) => {
                    self.hops.push(format!("{to} {:.0}ms", r["downtime_ms"].as_f64().unwrap_or(-1.0)));
                    let now = lab.host_of(&self.name);
                    if now != to {
                        self.problems.push(format!("after the migration to {to} the partition is on {now}"));
                        return;
                    }
                    // Right after the move, while the lazy fill may still
                    // run: the program must do new work, not only hold.
                    if self.prog.rounds {
                        let pid = lab.pid_of(&self.name);
                        match zdtm_progs::new_work_round(pid, &self.work, || running(pid)) {
                            Ok(()) => {
                                if let Some(h) = self.hops.last_mut() {
                                    h.push_str(" +work");
                                }
                            }
                            Err(e) => {
                                self.problems.push(format!("after the migration to {to}: {e}; {}", self.console(lab)));
                                return;
                            }
                        }
                    }
                }
                (Moved::Completed(_), Expect::Refused { error, why }) => {
                    self.hops.push(format!("{to} completed"));
                    self.problems.push(format!("the migration to {to} completed; expected a refusal naming {error:?} ({why})"));
                    return;
                }
                (Moved::Completed(_), Expect::CannotStart { .. }) => {
                    self.problems.push(format!("a program that cannot start in a partition was moved to {to}"));
                    return;
                }
                (Moved::Failed(e), expect) => {
                    let expected = matches!(expect, Expect::Refused { error, .. } if e.contains(error));
                    self.hops.push(format!("{to} {}", if expected { "refused" } else { "FAILED" }));
                    if !expected {
                        let stuck = stuck_under(lab, to, &self.name);
                        self.problems.push(format!(
                            "migration {from} -> {to} failed: {e}\n  {to}'s agent log:\n{}{}",
                            tail(&lab.lpmd_log_tail(to, 6), 6),
                            if stuck.is_empty() { String::new() } else { format!("\n  tasks stuck under {to}'s agent:\n{stuck}") }
                        ));
                    }
                    // Whatever the failure, the partition must be back
                    // where it was, running.
                    let (host, state) = (lab.host_of(&self.name), lab.state_of(&self.name));
                    if host != from || state != "running" {
                        self.problems.push(format!("after the failed migration the partition is {state} on {host}, not running on {from}"));
                    }
                    return;
                }
            }
        }
    }

    /// SIGTERM, then the program's verdict, then its init must exit.
    fn verdict(&mut self, lab: &TestLab) {
        let init = lab.pid_of(&self.name);
        let target = match self.prog.term {
            Term::Root => init,
            Term::OnlyChild => match children(init)[..] {
                [one] => one,
                ref kids => {
                    self.problems.push(format!("the init {init} has children {kids:?}, expected one"));
                    return;
                }
            },
        };
        if let Err(e) = kill(Pid::from_raw(target), Signal::SIGTERM) {
            self.problems.push(format!("SIGTERM {target}: {e}"));
            return;
        }
        let t = Instant::now();
        let result = loop {
            if let Ok(r) = std::fs::read_to_string(self.result_path()) {
                break r;
            }
            if t.elapsed() > RESULT_TIMEOUT {
                self.verdict = "none".into();
                self.problems.push(format!(
                    "no result within {RESULT_TIMEOUT:?} of SIGTERM to {target}; the tree:\n{}{}",
                    tree_states(init),
                    self.console(lab)
                ));
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.verdict = result.trim().chars().take(60).collect();
        if result != "PASS\n" {
            self.problems.push(format!("the program reported {:?}; {}", result.trim(), self.console(lab)));
        }
        let t = Instant::now();
        while lab.state_of(&self.name) == "running" {
            if t.elapsed() > EXIT_TIMEOUT {
                self.problems.push(format!("the partition still runs {EXIT_TIMEOUT:?} after the verdict"));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// One lab: every program of `progs` in a partition of its own on h1, all
/// started at once, then migrated one after the other, then judged.
fn zdtm_lab(index: usize, progs: &[(&'static Prog, Option<PathBuf>)]) -> Vec<ZRun> {
    let lab = TestLab::up(&format!("zdtm{index}"), 2);
    let outer = outer_ns();
    let mut listeners = Vec::new();
    let mut runs: Vec<ZRun> = progs.iter().map(|(p, _)| ZRun::new(p, &lab)).collect();
    for (run, (_, bin)) in runs.iter_mut().zip(progs) {
        if let Err(e) = run.start(&lab, bin.as_deref(), &outer, &mut listeners) {
            run.problems.push(format!("start: {e}"));
        }
    }
    for run in runs.iter_mut().filter(|r| r.started) {
        let ready = run.wait_ready(&lab);
        match (ready, run.expect) {
            (Ok(()), Expect::CannotStart { why, .. }) => {
                run.problems.push(format!("it started in a partition, though {why}: take it off CANNOT_START"));
                run.started = false;
            }
            (Err(e), Expect::CannotStart { error, .. }) => {
                run.verdict = "cannot start".into();
                if !e.contains(error) {
                    run.problems.push(format!("it did not start, but not for the expected reason ({error:?}): {e}"));
                }
                run.started = false;
            }
            (Err(e), _) => {
                run.problems.push(e);
                run.started = false;
            }
            (Ok(()), _) => {}
        }
    }
    for run in runs.iter_mut().filter(|r| r.started) {
        run.migrate(&lab);
    }
    for run in runs.iter_mut().filter(|r| r.started) {
        run.verdict(&lab);
    }
    runs
}

/// Builds the C programs once, for every lab; a failed build is that
/// program's failure.
fn build_all(dir: &Path) -> Vec<(&'static Prog, Result<Option<PathBuf>, String>)> {
    let progs: Vec<&'static Prog> = PROGS.iter().chain([&SOCK_OUTSIDE]).collect();
    let half = progs.len() / 2;
    std::thread::scope(|s| {
        let parts: Vec<_> = progs
            .chunks(half.max(1))
            .map(|chunk| {
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|&p| (p, if p.launch.is_c() { zdtm_progs::build(p, dir).map(Some) } else { Ok(None) }))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|h| h.join().expect("build thread")).collect()
    })
}

/// Removes a directory when the test ends.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every zdtm program in a partition, moved h1 → h2 → h1, then PASS (or
/// refused by name, and PASS on h1).
#[test]
fn zdtm_programs_move_there_and_back() {
    let t = Instant::now();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let build_dir = DirGuard(std::env::temp_dir().join(format!("lpm-migprog-build-{}-{nanos}", std::process::id())));
    std::fs::create_dir_all(&build_dir.0).unwrap();
    let built = build_all(&build_dir.0);
    let mut failed_builds = Vec::new();
    let mut ok = Vec::new();
    for (p, b) in built {
        match b {
            Ok(bin) => ok.push((p, bin)),
            Err(e) => failed_builds.push(format!("{}: {e}", p.name)),
        }
    }
    // Spread round robin: the heavy Python programs land in different labs.
    let mut groups: Vec<Vec<(&'static Prog, Option<PathBuf>)>> = vec![Vec::new(); ZDTM_LABS];
    for (i, job) in ok.into_iter().enumerate() {
        groups[i % ZDTM_LABS].push(job);
    }
    let runs: Vec<ZRun> = std::thread::scope(|s| {
        let handles: Vec<_> = groups.iter().enumerate().map(|(i, g)| s.spawn(move || zdtm_lab(i, g))).collect();
        handles.into_iter().flat_map(|h| h.join().expect("a lab thread panicked")).collect()
    });

    let mut table = String::new();
    let _ = writeln!(table, "{:<14} {:<10} {:<9} {:<32} {:<28} result", "program", "launch", "expect", "migrations (downtime)", "verdict");
    let mut failures = failed_builds;
    let mut sorted: Vec<&ZRun> = runs.iter().collect();
    sorted.sort_by_key(|r| r.prog.name);
    for r in &sorted {
        let expect = match r.expect {
            Expect::Pass => "pass",
            Expect::Refused { .. } => "refused",
            Expect::CannotStart { .. } => "no start",
        };
        let _ = writeln!(
            table,
            "{:<14} {:<10} {:<9} {:<32} {:<28} {}",
            r.prog.name,
            format!("{:?}", r.prog.launch),
            expect,
            if r.hops.is_empty() { "-".to_string() } else { r.hops.join(", ") },
            r.verdict,
            if r.problems.is_empty() { "ok" } else { "FAIL" }
        );
        let known = KNOWN_BROKEN.iter().find(|k| k.0 == r.prog.name);
        match (known, r.problems.is_empty()) {
            (None, false) => failures.push(format!("zdtm {} ({}):\n{}", r.prog.name, r.name, r.problems.join("\n"))),
            (Some(_), true) => {
                failures.push(format!("zdtm {}: listed in KNOWN_BROKEN but it passes now: take it off the list", r.prog.name))
            }
            _ => {}
        }
    }
    let _ = writeln!(table, "\nknown broken (bugs to fix; they fail as shown above):");
    for (name, why) in KNOWN_BROKEN {
        let _ = writeln!(table, "  {name}: {why}");
    }
    let _ = writeln!(table, "\nrefused by design:");
    for (name, error, why) in REFUSED {
        let _ = writeln!(table, "  {name}: {why} (the refusal names {error:?})");
    }
    let _ = writeln!(table, "\ncannot start in a partition:");
    for (name, error, why) in CANNOT_START {
        let _ = writeln!(table, "  {name}: {why} (its setup fails with {error:?})");
    }
    let _ = writeln!(table, "{} programs in {ZDTM_LABS} labs, {:.1} s", runs.len(), t.elapsed().as_secs_f64());
    println!("{table}");
    // Nothing is left out: every program of the table ran.
    for p in PROGS.iter().chain([&SOCK_OUTSIDE]) {
        assert!(runs.iter().any(|r| r.prog.name == p.name) || failures.iter().any(|f| f.starts_with(p.name)), "{} did not run", p.name);
    }
    assert!(
        failures.is_empty(),
        "{} of {} zdtm programs failed (the table is above):\n{}",
        failures.len(),
        runs.len(),
        failures.join("\n\n")
    );
}

// ------------------------------------------------------------ redis

/// A reply line of the redis protocol, with a bulk string's contents
/// (what a held-open client needs: statuses, integers, bulk strings).
fn resp_reply(r: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut l = String::new();
    r.read_line(&mut l)?;
    if !l.ends_with("\r\n") {
        return Err(std::io::Error::other(format!("reply cut short: {l:?}")));
    }
    let l = l.trim_end().to_string();
    if let Some(n) = l.strip_prefix('$') {
        let n: i64 = n.parse().map_err(|_| std::io::Error::other(format!("bad bulk length {l:?}")))?;
        if n < 0 {
            return Ok("(nil)".into());
        }
        let mut b = vec![0; n as usize + 2];
        r.read_exact(&mut b)?;
        b.truncate(n as usize);
        return Ok(String::from_utf8_lossy(&b).into_owned());
    }
    Ok(l)
}

fn resp_command(args: &[&str]) -> String {
    let mut s = format!("*{}\r\n", args.len());
    for a in args {
        let _ = write!(s, "${}\r\n{a}\r\n", a.len());
    }
    s
}

/// A client connection to redis held open by the test across the moves.
struct Held {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Held {
    fn cmd(&mut self, args: &[&str]) -> String {
        self.w.write_all(resp_command(args).as_bytes()).unwrap_or_else(|e| panic!("held connection: send {args:?}: {e}"));
        resp_reply(&mut self.r).unwrap_or_else(|e| panic!("held connection: reply to {args:?}: {e}"))
    }
}

/// The dataset: 4000 keys of each of five types, as RESP for `redis-cli --pipe`.
const PER_TYPE: usize = 4000;

fn dataset() -> String {
    let mut out = String::new();
    for i in 0..PER_TYPE {
        let (k, n) = (i.to_string(), (i * i).to_string());
        out.push_str(&resp_command(&["SET", &format!("str:{i}"), &format!("value-{i}-{}", i * 7919 % 10007)]));
        out.push_str(&resp_command(&["HSET", &format!("hash:{i}"), "id", &k, "name", &format!("n{i}"), "sq", &n]));
        out.push_str(&resp_command(&["RPUSH", &format!("list:{i}"), "a", &k, "c", &format!("x{}", i % 13)]));
        out.push_str(&resp_command(&["SADD", &format!("set:{i}"), &format!("m{}", i % 7), &format!("m{}", i % 11), "common"]));
        out.push_str(&resp_command(&["ZADD", &format!("zset:{i}"), "1", "one", &(i % 100).to_string(), "var", "1000", "top"]));
    }
    out
}

/// `redis-cli -h IP ARGS` from the client namespace; its stdout.
fn redis_cli(lab: &TestLab, ip: &str, args: &[&str]) -> String {
    let out =
        lab.client_cmd(&[&["redis-cli", "-h", ip, "-p", "6379"], args].concat()).stdin(Stdio::null()).output().expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The value of `field` in redis' INFO section `section`.
fn redis_info(lab: &TestLab, ip: &str, section: &str, field: &str) -> String {
    let text = redis_cli(lab, ip, &["INFO", section]);
    text.lines()
        .find_map(|l| l.trim().strip_prefix(field).and_then(|v| v.strip_prefix(':')))
        .unwrap_or_else(|| panic!("INFO {section} has no {field}: {text}"))
        .to_string()
}

/// BGSAVE, the `nth` since redis started: its forked child writes the
/// dataset to `dir`; waits until redis counts the save done and well.
fn bgsave(lab: &TestLab, ip: &str, dir: &Path, nth: usize, host: &str) {
    let rdb = dir.join("dump.rdb");
    let _ = std::fs::remove_file(&rdb);
    assert_eq!(redis_cli(lab, ip, &["BGSAVE"]), "Background saving started", "BGSAVE on {host}");
    let t = Instant::now();
    while redis_info(lab, ip, "persistence", "rdb_saves") != nth.to_string()
        || redis_info(lab, ip, "persistence", "rdb_bgsave_in_progress") != "0"
    {
        assert!(t.elapsed() < Duration::from_secs(20), "BGSAVE on {host} did not end within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(redis_info(lab, ip, "persistence", "rdb_last_bgsave_status"), "ok", "BGSAVE on {host}");
    let len = std::fs::metadata(&rdb).map(|m| m.len()).unwrap_or(0);
    assert!(len > 100_000, "BGSAVE on {host} wrote {} ({len} bytes)", rdb.display());
}

/// redis-server loaded with 20000 keys over the partition network, moved
/// h1 → h2 → h1: DEBUG DIGEST is the same before and after each move, a
/// connection the test holds open from the client namespace keeps working
/// (its counter goes on by one per move), and after each move redis forks
/// for a BGSAVE whose child writes the dataset out.
#[test]
fn redis_moves_there_and_back() {
    let redis = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("redis-server is not installed: run scripts/setup.sh");
    let lab = TestLab::up("redis", 2);
    let dir = lab.vol.join("redis");
    std::fs::create_dir_all(&dir).unwrap();
    let argv: Vec<String> = [
        redis,
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
        "--enable-debug-command",
        "yes",
        "--dir",
        &dir.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    lab.create("redis", "h1", Some("1G"), &argv).unwrap();
    let ip = lab.ip_of("redis");
    lab.wait_log("redis", "Ready to accept connections", Duration::from_secs(20));

    // Populate from the client namespace with redis-cli's mass insert.
    let data = lab.vol.join("dataset.resp");
    std::fs::write(&data, dataset()).unwrap();
    let out = lab
        .client_cmd(&["redis-cli", "-h", &ip, "-p", "6379", "--pipe"])
        .stdin(std::fs::File::open(&data).unwrap())
        .output()
        .expect("run redis-cli --pipe");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("errors: 0, replies: {}", 5 * PER_TYPE)),
        "redis-cli --pipe: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(redis_cli(&lab, &ip, &["DBSIZE"]), (5 * PER_TYPE).to_string());

    let addr: SocketAddr = format!("{ip}:6379").parse().unwrap();
    let s = lab.connect_from_client(addr).expect("connect to redis from the client namespace");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut held = Held { r: BufReader::new(s.try_clone().unwrap()), w: s };
    assert_eq!(held.cmd(&["INCR", "held"]), ":1");
    let mut downtimes = Vec::new();
    for (n, to) in ["h2", "h1"].into_iter().enumerate() {
        let before = redis_cli(&lab, &ip, &["DEBUG", "DIGEST"]);
        let r = moved(&lab, "redis", to);
        downtimes.push(r["downtime_ms"].as_f64().unwrap_or(-1.0));
        assert_eq!(lab.host_of("redis"), to);
        assert_eq!(redis_cli(&lab, &ip, &["DEBUG", "DIGEST"]), before, "DEBUG DIGEST changed across the migration to {to}");
        // The connection held open across the move goes on.
        assert_eq!(held.cmd(&["INCR", "held"]), format!(":{}", n + 2), "the held connection after the migration to {to}");
        assert_eq!(held.cmd(&["GET", "str:1234"]), format!("value-1234-{}", 1234 * 7919 % 10007));
        assert_eq!(held.cmd(&["LRANGE", "list:7", "0", "0"]), "*1", "an array of one");
        assert_eq!(resp_reply(&mut held.r).unwrap(), "a");
        // New work: a fork (BGSAVE's child writes the dataset out) and new
        // connections asking how it went.
        bgsave(&lab, &ip, &dir, n + 1, to);
    }
    assert_eq!(redis_cli(&lab, &ip, &["DBSIZE"]), (5 * PER_TYPE + 1).to_string());
    assert_eq!(redis_cli(&lab, &ip, &["HGET", "hash:3999", "sq"]), (3999 * 3999).to_string());
    println!("redis: 20000 keys, downtime {downtimes:?} ms");
}

// ------------------------------------------------------------ 64 threads

/// The 64-thread program of `real.rs`: each thread counts under a mutex and
/// alone; every 100 ms the main thread creates and joins a helper thread
/// (new work, on the stack of the previous one) and logs
/// "n total sum ok|BAD helpers".
const THREADS: &str = include_str!("programs/threads64.c");

/// A line of the log.
#[derive(Clone, Copy, Debug)]
struct ThreadLine {
    n: u64,
    total: u64,
    sum: u64,
    ok: bool,
    /// Helper threads created and joined so far (n when every line had one).
    helpers: u64,
}

fn thread_log(p: &Path) -> Vec<ThreadLine> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let num = |i: usize| w.get(i)?.parse().ok();
            Some(ThreadLine { n: num(0)?, total: num(1)?, sum: num(2)?, ok: *w.get(3)? == "ok", helpers: num(4)? })
        })
        .collect()
}

fn wait_thread_lines(p: &Path, n: usize) {
    let t = Instant::now();
    while thread_log(p).len() < n {
        assert!(t.elapsed() < Duration::from_secs(20), "{} never reached {n} lines", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// 64 threads moved h1 → h2 → h1: all 65 tasks arrive, the log goes on
/// without a gap, the counters keep increasing and agree, and after each
/// move the main thread goes on creating a new thread for every line.
#[test]
fn sixty_four_threads_move_there_and_back() {
    let lab = TestLab::up("threads", 2);
    let src = lab.vol.join("threads64.c");
    std::fs::write(&src, THREADS).unwrap();
    let bin = lab.vol.join("threads64");
    let st = Command::new("gcc").args(["-O1", "-pthread", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
    assert!(st.success(), "gcc failed");
    let log = lab.vol.join("threads64.log");
    lab.create("threads64", "h1", Some("512M"), &[bin.to_string_lossy().into_owned(), log.to_string_lossy().into_owned()]).unwrap();
    wait_thread_lines(&log, 3);
    for to in ["h2", "h1"] {
        let before = thread_log(&log);
        let last = *before.last().unwrap();
        moved(&lab, "threads64", to);
        assert_eq!(lab.host_of("threads64"), to);
        let state = lab.state_of("threads64");
        assert_eq!(
            state,
            "running",
            "the program ended after the move to {to}; its log ends:\n{}\n{to}'s agent log:\n{}",
            tail(&std::fs::read_to_string(&log).unwrap_or_default(), 5),
            lab.lpmd_log_tail(to, 60)
        );
        let pid = lab.pid_of("threads64");
        // The 64 workers and the main thread; a helper of the main thread
        // may be running (or have been, when the partition stopped).
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().count();
        assert!(tasks == 65 || tasks == 66, "{tasks} tasks of the init after the move to {to}, expected 65 (66 with a helper)");
        wait_thread_lines(&log, before.len() + 5);
        let lines = thread_log(&log);
        let now = *lines.last().unwrap();
        assert!(now.total > last.total && now.sum > last.sum, "the counters did not go on after the move to {to}: {last:?} -> {now:?}");
        let after: Vec<&ThreadLine> = lines.iter().filter(|l| l.n > last.n).collect();
        assert!(
            after.len() >= 5 && after.iter().all(|l| l.helpers == l.n && l.ok),
            "after the move to {to} the main thread did not create a working thread for every line: {after:?}"
        );
    }
    let lines = thread_log(&log);
    assert!(
        lines.windows(2).all(|w| w[1].n == w[0].n + 1),
        "the log has a gap or a repeat: {:?}",
        lines.iter().map(|l| l.n).collect::<Vec<_>>()
    );
    // Never down; up over the whole run and after each move (checked
    // above). Not on every line: right after a restore the main thread's
    // sleep may be over before any worker ran again.
    assert!(lines.windows(2).all(|w| w[1].total >= w[0].total), "the total went down: {lines:?}");
    assert!(lines.iter().all(|l| l.ok), "a thread's accumulator or a helper thread went wrong (BAD)");
    assert!(lines.iter().all(|l| l.helpers == l.n), "a line without its helper thread: {lines:?}");
    // The total is counted under the mutex and each thread's count right
    // after it: at most one increment per thread may be in between.
    for l in &lines {
        assert!(l.sum <= l.total && l.total - l.sum <= 64, "total {} and the threads' sum {} disagree (line {})", l.total, l.sum, l.n);
    }
    println!("threads64: {} lines, total {}, {} helper threads", lines.len(), lines.last().unwrap().total, lines.last().unwrap().helpers);
}

// ------------------------------------------------------------ shared memory

/// The shared memory program: four processes writing a MAP_SHARED
/// anonymous area, a SysV segment, a memfd and an unlinked /dev/shm file.
const SHM_WRITERS: &str = include_str!("programs/shm_writers.c");

/// One object of `shm_writers.c`: how /proc/PID/maps names it, its size,
/// and the pages of each writer's slice.
struct ShmObj {
    what: &'static str,
    size: u64,
    slice: u64,
}

const SHM_OBJS: [ShmObj; 4] = [
    ShmObj { what: "/dev/zero (deleted)", size: 16 << 20, slice: 256 },
    ShmObj { what: "/SYSV", size: 8 << 20, slice: 256 },
    ShmObj { what: "/memfd:shm_writers", size: 1 << 20, slice: 16 },
    ShmObj { what: "/dev/shm/lpm-shm-writers-", size: 4 << 20, slice: 16 },
];

/// Writers in `shm_writers.c`.
const SHM_WRITERS_N: u64 = 4;

/// The partition's processes: `pid` and its descendants.
fn tree_of(pid: i32) -> Vec<i32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", out[i])).unwrap_or_default();
        out.extend(kids.split_whitespace().filter_map(|k| k.parse::<i32>().ok()));
        i += 1;
    }
    out
}

/// Checks every object of the program whose parent is `pid`, from
/// outside, with its processes stopped (SIGSTOP; a writer may stop in the
/// middle of a page): each writer's slice holds generation h+1 on a
/// prefix and h on the rest (h its header's word), at most one page torn
/// between them, every word naming its writer and page; past the slices
/// the object holds nothing (holes stayed holes). Returns the headers.
fn check_shm_objects(pid: i32) -> Vec<u64> {
    use std::os::unix::fs::FileExt;
    let procs = tree_of(pid);
    assert_eq!(procs.len() as u64, SHM_WRITERS_N, "the writers of pid {pid}: {procs:?}");
    for &p in &procs {
        kill(Pid::from_raw(p), Signal::SIGSTOP).unwrap();
    }
    // Stopped for real before a page is read.
    for &p in &procs {
        let t = Instant::now();
        while !std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default().split(") ").nth(1).is_some_and(|s| s.starts_with('T'))
        {
            assert!(t.elapsed() < Duration::from_secs(10), "pid {p} does not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut headers = Vec::new();
    let mut problems = Vec::new();
    for o in &SHM_OBJS {
        let line = maps.lines().find(|l| l.contains(o.what) && l.split_whitespace().nth(1).is_some_and(|p| p.ends_with('s')));
        let Some(line) = line else {
            problems.push(format!("{} is not mapped shared by pid {pid}:\n{maps}", o.what));
            continue;
        };
        let range = line.split_whitespace().next().unwrap();
        let file = std::fs::File::open(format!("/proc/{pid}/map_files/{range}")).unwrap();
        assert_eq!(file.metadata().unwrap().len(), o.size, "{} size", o.what);
        let mut data = vec![0u8; ((1 + SHM_WRITERS_N * o.slice) * 4096) as usize];
        file.read_exact_at(&mut data, 0).unwrap();
        let word = |page: u64, i: usize| {
            let at = page as usize * 4096 + i * 8;
            u64::from_le_bytes(data[at..at + 8].try_into().unwrap())
        };
        for w in 0..SHM_WRITERS_N {
            let h = word(0, w as usize);
            headers.push(h);
            let mut gens = Vec::new();
            let mut torn = 0;
            for page in 0..o.slice {
                let at = 1 + w * o.slice + page;
                let words: Vec<u64> = (0..512).map(|i| word(at, i)).collect();
                if let Some(bad) = words.iter().find(|&&v| v & 0xffff_ffff != (w << 16) | page) {
                    problems.push(format!("{} writer {w} page {page}: word {bad:#x} names another page", o.what));
                    break;
                }
                let first = words[0] >> 32;
                let split = words.iter().position(|&v| v >> 32 != first).unwrap_or(512);
                if split < 512 {
                    torn += 1;
                    if words[split..].iter().any(|&v| v >> 32 != first.wrapping_sub(1)) {
                        problems.push(format!("{} writer {w} page {page}: torn other than g+1 then g", o.what));
                    }
                }
                gens.push(first);
            }
            let monotone = gens.windows(2).all(|g| g[0] >= g[1] && g[0] - g[1] <= 1);
            let in_range = gens.iter().all(|&g| g == h || g == h + 1);
            if !monotone || !in_range || torn > 1 {
                problems.push(format!("{} writer {w}: header {h}, generations {gens:?}, {torn} torn pages", o.what));
            }
        }
        let end = (1 + SHM_WRITERS_N * o.slice) * 4096;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: lseek on a descriptor this function holds open.
        let data_after = unsafe { libc::lseek(fd, end as i64, libc::SEEK_DATA) };
        if data_after >= 0 {
            problems.push(format!("{}: data at {data_after:#x}, past every slice (a hole filled)", o.what));
        }
    }
    for &p in &procs {
        kill(Pid::from_raw(p), Signal::SIGCONT).unwrap();
    }
    assert!(problems.is_empty(), "shared memory of pid {pid} is not what its writers wrote:\n{}", problems.join("\n"));
    headers
}

/// Four processes write shared memory of every kind (MAP_SHARED
/// anonymous, SysV, memfd, an unlinked /dev/shm file) all through their
/// moves h1 → h2 → h1. The MAP_SHARED anonymous area and the SysV segment
/// go in the pre-copy rounds, so the stop's state image holds neither;
/// after each move every object reads, from outside, as its writers left
/// it (generations in order, holes still holes), and the writers go on.
#[test]
fn shared_memory_goes_in_the_rounds() {
    let lab = TestLab::up("shm", 2);
    let src = lab.vol.join("shm_writers.c");
    std::fs::write(&src, SHM_WRITERS).unwrap();
    let bin = lab.vol.join("shm_writers");
    let st = Command::new("gcc").args(["-O1", "-Wall", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
    assert!(st.success(), "gcc failed");
    let log = lab.vol.join("shm_writers.log");
    // Its writers open their mappings through /proc/self/map_files, which
    // takes CAP_CHECKPOINT_RESTORE (not in a partition's default set).
    let argv = [bin.to_string_lossy().into_owned(), log.to_string_lossy().into_owned()];
    lab.create_with("shmw", "h1", Some("512M"), &["--cap-add", "CHECKPOINT_RESTORE"], &argv).unwrap();
    let t = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("gen ") {
        assert!(t.elapsed() < Duration::from_secs(30), "shm_writers never got going: {}", lab.logs("shmw"));
        std::thread::sleep(Duration::from_millis(50));
    }
    check_shm_objects(lab.pid_of("shmw"));
    // What the tracked objects hold (written slices and headers), sent in
    // the rounds and not in the stop.
    let tracked: u64 = SHM_OBJS[..2].iter().map(|o| (1 + SHM_WRITERS_N * o.slice) * 4096).sum();
    for to in ["h2", "h1"] {
        let r = moved(&lab, "shmw", to);
        assert_eq!(lab.state_of("shmw"), "running", "after the move to {to}: {}", lab.logs("shmw"));
        let pid = lab.pid_of("shmw");
        let before = check_shm_objects(pid);
        let stop = &r["stop"];
        let image = stop["state_image_bytes"].as_u64().unwrap();
        let rounds: u64 = r["rounds"].as_array().unwrap().iter().map(|x| x["bytes"].as_u64().unwrap()).sum();
        println!(
            "shm_writers to {to}: state image {image} B, final pages {}, rounds {} ({rounds} B), downtime {} ms",
            stop["final_pages"],
            r["rounds"].as_array().unwrap().len(),
            r["downtime_ms"]
        );
        assert!(rounds >= tracked, "the rounds sent {rounds} bytes, less than the {tracked} the shared objects hold: {r}");
        assert!(image < tracked / 4, "the stop's state image holds {image} bytes: the shared objects ({tracked} bytes) went in it: {r}");
        // The writers go on: every header moves.
        let t = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(500));
            let now = check_shm_objects(pid);
            if now.iter().zip(&before).all(|(a, b)| a > b) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "the writers stopped after the move to {to}: {before:?} -> {now:?}");
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!text.contains("died"), "a writer died: {text}");
    }
}

const SHM_FORKERS: &str = include_str!("programs/shm_forkers.c");

/// Checks the objects of `shm_forkers.c` whose parent is `pid`, from
/// outside, with its processes stopped (the parent first, so that it forks
/// no more; a child may stop in the middle of a page): each slice holds
/// generation h+1 on a prefix and h on the rest (h its header word), at
/// most one page torn between them, every word naming its slice and page;
/// past the slices the object holds nothing. Returns the headers, or what
/// is wrong.
fn check_forker_objects(pid: i32) -> Result<Vec<u64>, String> {
    use std::os::unix::fs::FileExt;
    const SLICE: u64 = 32;
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let stopped = |p: i32| {
        let t = Instant::now();
        // A child that exited stays a zombie: its parent is stopped.
        while !std::fs::read_to_string(format!("/proc/{p}/stat"))
            .map_or(true, |s| s.split(") ").nth(1).is_some_and(|s| s.starts_with('T') || s.starts_with('Z')))
        {
            assert!(t.elapsed() < Duration::from_secs(10), "pid {p} does not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    stopped(pid);
    let procs = tree_of(pid);
    for &p in &procs[1..] {
        let _ = kill(Pid::from_raw(p), Signal::SIGSTOP);
        stopped(p);
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let mut headers = Vec::new();
    let mut problems = Vec::new();
    for what in ["/dev/zero (deleted)", "/SYSV"] {
        let line = maps.lines().find(|l| l.contains(what) && l.split_whitespace().nth(1).is_some_and(|p| p.ends_with('s')));
        let Some(line) = line else {
            problems.push(format!("{what} is not mapped shared by pid {pid}:\n{maps}"));
            continue;
        };
        let range = line.split_whitespace().next().unwrap();
        let file = std::fs::File::open(format!("/proc/{pid}/map_files/{range}")).unwrap();
        let mut data = vec![0u8; ((1 + 2 * SLICE) * 4096) as usize];
        file.read_exact_at(&mut data, 0).unwrap();
        let word = |page: u64, i: usize| {
            let at = page as usize * 4096 + i * 8;
            u64::from_le_bytes(data[at..at + 8].try_into().unwrap())
        };
        for s in 0..2u64 {
            let h = word(0, s as usize);
            headers.push(h);
            let mut gens = Vec::new();
            let mut torn = 0;
            for page in 0..SLICE {
                let words: Vec<u64> = (0..512).map(|i| word(1 + s * SLICE + page, i)).collect();
                if let Some(bad) = words.iter().find(|&&v| v & 0xffff_ffff != (s << 16) | page) {
                    problems.push(format!("{what} slice {s} page {page}: word {bad:#x} names another page"));
                    break;
                }
                let first = words[0] >> 32;
                let split = words.iter().position(|&v| v >> 32 != first).unwrap_or(512);
                if split < 512 {
                    torn += 1;
                    if words[split..].iter().any(|&v| v >> 32 != first.wrapping_sub(1)) {
                        problems.push(format!("{what} slice {s} page {page}: torn other than g+1 then g"));
                    }
                }
                gens.push(first);
            }
            let monotone = gens.windows(2).all(|g| g[0] >= g[1] && g[0] - g[1] <= 1);
            let in_range = gens.iter().all(|&g| g == h || g == h + 1);
            if !monotone || !in_range || torn > 1 {
                problems.push(format!("{what} slice {s}: header {h}, generations {gens:?}, {torn} torn pages"));
            }
        }
        let end = (1 + 2 * SLICE) * 4096;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: lseek on a descriptor this function holds open.
        let data_after = unsafe { libc::lseek(fd, end as i64, libc::SEEK_DATA) };
        if data_after >= 0 {
            problems.push(format!("{what}: data at {data_after:#x}, past every slice (a hole filled)"));
        }
    }
    for &p in procs.iter().rev() {
        let _ = kill(Pid::from_raw(p), Signal::SIGCONT);
    }
    if problems.is_empty() {
        Ok(headers)
    } else {
        Err(format!("shared memory of pid {pid} is not what its writers wrote:\n{}", problems.join("\n")))
    }
}

/// `shm_forkers` built and started in partition `name` on h1, running.
fn start_forkers(lab: &TestLab, name: &str, fast: bool) -> PathBuf {
    let src = lab.vol.join("shm_forkers.c");
    std::fs::write(&src, SHM_FORKERS).unwrap();
    let bin = lab.vol.join("shm_forkers");
    let st = Command::new("gcc").args(["-O1", "-Wall", "-o"]).arg(&bin).arg(&src).status().expect("gcc");
    assert!(st.success(), "gcc failed");
    let log = lab.vol.join("shm_forkers.log");
    let mut argv = vec![bin.to_string_lossy().into_owned(), log.to_string_lossy().into_owned()];
    if fast {
        argv.push("fast".into());
    }
    lab.create(name, "h1", Some("256M"), &argv).unwrap();
    let t = Instant::now();
    while !std::fs::read_to_string(&log).unwrap_or_default().contains("gen ") {
        assert!(t.elapsed() < Duration::from_secs(30), "shm_forkers never got going: {}", lab.logs(name));
        std::thread::sleep(Duration::from_millis(50));
    }
    check_forker_objects(lab.pid_of(name)).unwrap_or_else(|e| panic!("before any move: {e}"));
    log
}

/// A parent that forks a child for every generation, the child writing
/// shared memory (a MAP_SHARED anonymous area and a SysV segment) and
/// exiting at once, moves h1 → h2 → h1. The processes forked during
/// pre-copy are tracked as they are heard of, and what each wrote before
/// that or before it exited goes again in the next round: the objects
/// stay out of the stop's state image, and after each move every page
/// reads, from outside, as the writers left it.
#[test]
fn shared_memory_stays_in_the_rounds_across_forks() {
    let lab = TestLab::up("shmfork", 2);
    let log = start_forkers(&lab, "shmf", false);
    let tracked: u64 = 2 * (1 + 2 * 32) * 4096;
    for to in ["h2", "h1"] {
        let r = moved(&lab, "shmf", to);
        assert_eq!(lab.state_of("shmf"), "running", "after the move to {to}: {}", lab.logs("shmf"));
        let pid = lab.pid_of("shmf");
        let before = check_forker_objects(pid).unwrap_or_else(|e| panic!("after the move to {to}: {e}"));
        let stop = &r["stop"];
        let image = stop["state_image_bytes"].as_u64().unwrap();
        println!(
            "shm_forkers to {to}: state image {image} B, final pages {}, rounds {}, downtime {} ms",
            stop["final_pages"],
            r["rounds"].as_array().unwrap().len(),
            r["downtime_ms"]
        );
        assert!(image < tracked / 2, "the stop's state image holds {image} bytes: the shared objects ({tracked} bytes) went in it: {r}");
        // The writers go on: every header moves.
        let t = Instant::now();
        loop {
            std::thread::sleep(Duration::from_millis(300));
            let now = check_forker_objects(pid).unwrap_or_else(|e| panic!("after the move to {to}, running on: {e}"));
            if now.iter().zip(&before).all(|(a, b)| a > b) {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(30), "the writers stopped after the move to {to}: {before:?} -> {now:?}");
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!text.contains("died") && !text.contains("BAD"), "a writer found its slice wrong: {}", tail(&text, 5));
    }
}

/// The sabotage of the test above: without sending the objects again when
/// a process comes or goes (`precopy-fork-window`), what the children
/// wrote before pre-copy tracked them or before they exited is lost, and
/// the check from outside sees it.
#[test]
fn shared_memory_across_forks_sabotaged_is_caught() {
    let lab = TestLab::up_with("shmforksab", 2, &[(lpm_engine::SABOTAGE_ENV, "precopy-fork-window")]);
    // No child pauses: none is tracked before it is gone, so every page
    // of the children's slice is as the last round before the stop read it.
    let log = start_forkers(&lab, "shms", true);
    let r = moved(&lab, "shms", "h2");
    println!("sabotaged move: rounds {}, stop {}", r["rounds"].as_array().unwrap().len(), r["stop"]);
    // The next child checks the slice before it writes: a stale page ends
    // the program with "BAD" in its log.
    let t = Instant::now();
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("BAD") || t.elapsed() > Duration::from_secs(10) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains("BAD"), "the sabotaged move left every page right: the check cannot fail; log:\n{}", tail(&text, 5));
}

// ------------------------------------------------------------ http.server

/// One HTTP/1.0 GET from the client namespace, on a connection of its own:
/// the status and the body.
fn http_get(lab: &TestLab, addr: SocketAddr, path: &str) -> Result<(u16, Vec<u8>), String> {
    let mut s = lab.connect_from_client(addr).map_err(|e| format!("connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).map_err(|e| format!("GET {path}: send: {e}"))?;
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).map_err(|e| format!("GET {path}: read: {e}"))?;
    let head_end =
        reply.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("GET {path}: no header in {} bytes", reply.len()))?;
    let head = String::from_utf8_lossy(&reply[..head_end]);
    let status = head.split_whitespace().nth(1).and_then(|w| w.parse().ok()).ok_or_else(|| format!("GET {path}: no status in {head:?}"))?;
    Ok((status, reply[head_end + 4..].to_vec()))
}

/// The files the server serves: a few small pages and a larger one.
fn web_files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> =
        (0..6).map(|i| (format!("page-{i}.txt"), format!("page {i}: {}\n", "lpm ".repeat(i * 50)).into_bytes())).collect();
    files.push(("big.bin".into(), (0..256 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect()));
    std::fs::create_dir_all(dir).unwrap();
    for (name, data) in &files {
        std::fs::write(dir.join(name), data).unwrap();
    }
    files
}

/// Fresh requests, each on a new connection: every file one after the
/// other, then four at once (a thread each in the server), a missing
/// file and the directory listing. Fails naming the first wrong answer.
fn web_round(lab: &TestLab, addr: SocketAddr, files: &[(String, Vec<u8>)], when: &str) {
    let check = |name: &str, data: &[u8]| match http_get(lab, addr, &format!("/{name}")) {
        Ok((200, body)) if body == data => Ok(()),
        Ok((status, body)) => Err(format!("GET /{name}: status {status}, {} bytes (expected 200, {} bytes)", body.len(), data.len())),
        Err(e) => Err(e),
    };
    for (name, data) in files {
        check(name, data).unwrap_or_else(|e| panic!("{when}: {e}"));
    }
    let errors: Vec<String> = std::thread::scope(|sc| {
        let hs: Vec<_> = files.iter().take(4).map(|(name, data)| sc.spawn(move || check(name, data))).collect();
        hs.into_iter().filter_map(|h| h.join().expect("request thread").err()).collect()
    });
    assert!(errors.is_empty(), "{when}: concurrent requests failed: {errors:?}");
    match http_get(lab, addr, "/no-such-file") {
        Ok((404, _)) => {}
        other => panic!("{when}: GET /no-such-file: {other:?}, expected 404"),
    }
    match http_get(lab, addr, "/") {
        Ok((200, body)) if String::from_utf8_lossy(&body).contains("page-5.txt") => {}
        other => panic!("{when}: GET / (the listing): {:?}", other.map(|(s, b)| (s, String::from_utf8_lossy(&b).into_owned()))),
    }
}

/// `python3 -m http.server` (a thread per request) moved h1 → h2 → h1
/// after serving requests: after each move it answers fresh requests from
/// the client namespace, on new connections, several at once.
#[test]
fn http_server_serves_after_each_move() {
    let lab = TestLab::up("http", 2);
    let www = lab.vol.join("www");
    let files = web_files(&www);
    let argv: Vec<String> = ["python3", "-m", "http.server", "8000", "--bind", "0.0.0.0", "--directory", &www.to_string_lossy()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    lab.create("web", "h1", Some("256M"), &argv).unwrap();
    let addr: SocketAddr = format!("{}:8000", lab.ip_of("web")).parse().unwrap();
    // Listening once a request is answered.
    let t = Instant::now();
    while let Err(e) = http_get(&lab, addr, "/page-0.txt") {
        assert!(t.elapsed() < Duration::from_secs(20), "http.server did not answer within 20 s: {e}; console:\n{}", lab.logs("web"));
        std::thread::sleep(Duration::from_millis(50));
    }
    web_round(&lab, addr, &files, "before the first move");
    for to in ["h2", "h1"] {
        let r = moved(&lab, "web", to);
        assert_eq!(lab.host_of("web"), to);
        web_round(&lab, addr, &files, &format!("after the move to {to}"));
        assert_eq!(lab.state_of("web"), "running", "after serving on {to}; console:\n{}", tail(&lab.logs("web"), 20));
        println!("http.server on {to}: downtime {:.1} ms, fresh requests answered", r["downtime_ms"].as_f64().unwrap_or(-1.0));
    }
}

// ------------------------------------------------------------ shell loop

/// A shell loop that forks all the time: a subshell and a `cat` for every
/// number, checked, and a line "n ok" in its log every 200 numbers.
const SHELL_LOOP: &str = r#"n=0; while :; do n=$((n+1)); o=$(echo $n | cat); if [ "$o" != "$n" ]; then echo "$n BAD $o" >> "$1"; exit 1; fi; if [ $((n % 200)) = 0 ]; then echo "$n ok" >> "$1"; fi; done"#;

/// The log lines of the shell loop: (n, ok).
fn shell_log(p: &Path) -> Vec<(u64, bool)> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.parse().ok()?, w.next()? == "ok"))
        })
        .collect()
}

/// Waits until the shell loop's log has `n` lines, all ok.
fn wait_shell_lines(lab: &TestLab, p: &Path, n: usize, when: &str) {
    let t = Instant::now();
    loop {
        let lines = shell_log(p);
        assert!(lines.iter().all(|l| l.1), "{when}: the loop went wrong: {lines:?}");
        if lines.len() >= n {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{when}: {} lines of {n} after 30 s; console:\n{}", lines.len(), lab.logs("shloop"));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A shell loop whose tasks come and go while it moves (subshells and
/// commands exiting during the stop, the source's tracking and the
/// target's fill) goes h1 → h2 → h1 → h2 → h1, and after each move goes
/// on forking and running commands: its log keeps counting, every line
/// checked, without a gap.
#[test]
fn shell_loop_moves_while_it_forks() {
    let lab = TestLab::up("shloop", 2);
    let log = lab.vol.join("shloop.log");
    let argv: Vec<String> = ["sh", "-c", SHELL_LOOP, "shloop", &log.to_string_lossy()].iter().map(|s| s.to_string()).collect();
    lab.create("shloop", "h1", Some("256M"), &argv).unwrap();
    wait_shell_lines(&lab, &log, 2, "before the first move");
    let mut downtimes = Vec::new();
    for to in ["h2", "h1", "h2", "h1"] {
        let r = moved(&lab, "shloop", to);
        downtimes.push(r["downtime_ms"].as_f64().unwrap_or(-1.0));
        assert_eq!(lab.host_of("shloop"), to);
        let at = shell_log(&log).len();
        wait_shell_lines(&lab, &log, at + 3, &format!("after the move to {to}"));
    }
    let lines = shell_log(&log);
    assert!(lines.windows(2).all(|w| w[1].0 == w[0].0 + 200), "the log has a gap or a repeat: {lines:?}");
    println!("shell loop: {} numbers, downtime {downtimes:?} ms", lines.last().unwrap().0);
}

// ------------------------------------------------------------------ tmux

/// The last count window `window` of the tmux server at `sock` shows.
fn tmux_count(sock: &Path, window: &str) -> Option<u64> {
    let out = Command::new("tmux").arg("-S").arg(sock).args(["capture-pane", "-p", "-t", window]).env_remove("TMUX").output().ok()?;
    String::from_utf8_lossy(&out.stdout).lines().rev().find_map(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Waits until window `window` counts past `above`; what it shows then.
fn tmux_counts_past(sock: &Path, window: &str, above: u64, when: &str) -> u64 {
    let t = Instant::now();
    loop {
        if let Some(n) = tmux_count(sock, window).filter(|&n| n > above) {
            return n;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{when}: tmux window {window} never counted past {above}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tmux server (`tmux -D`, the partition's root) with two windows, each
/// a shell loop counting in its pane, goes h1 → h2 → h1: after each move
/// `tmux capture-pane`, a client from the host, shows both loops counting
/// on from where they were, in the same shells.
#[test]
fn tmux_moves_there_and_back() {
    let lab = TestLab::up("tmux", 2);
    let sock = lab.vol.join("tmux.sock");
    let conf = lab.vol.join("tmux.conf");
    // Single quotes: tmux expands $VARIABLES inside double quotes.
    let loop_ = |tag: &str| format!("'i=0; while :; do i=$((i+1)); echo \"{tag} $i\"; sleep 0.1; done'");
    std::fs::write(&conf, format!("new-session -d -s lpm -x 100 -y 30 {}\nnew-window -t lpm {}\n", loop_("a"), loop_("b"))).unwrap();
    let argv: Vec<String> =
        ["tmux", "-D", "-S", &sock.to_string_lossy(), "-f", &conf.to_string_lossy()].iter().map(|s| s.to_string()).collect();
    lab.create("tmux", "h1", Some("256M"), &argv).unwrap();
    let panes = || {
        let out = Command::new("tmux").arg("-S").arg(&sock).args(["list-panes", "-a", "-F", "#{pane_pid}"]).env_remove("TMUX").output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    let (mut a, mut b) = (tmux_counts_past(&sock, "lpm:0", 3, "before"), tmux_counts_past(&sock, "lpm:1", 3, "before"));
    let shells = panes();
    assert_eq!(shells.lines().count(), 2, "two panes: {shells}");
    let mut downtimes = Vec::new();
    for to in ["h2", "h1"] {
        let r = moved(&lab, "tmux", to);
        downtimes.push(r["downtime_ms"].as_f64().unwrap_or(-1.0));
        assert_eq!(lab.host_of("tmux"), to);
        let when = format!("after the move to {to}");
        a = tmux_counts_past(&sock, "lpm:0", a, &when);
        b = tmux_counts_past(&sock, "lpm:1", b, &when);
        assert_eq!(panes(), shells, "{when}: the panes' shells changed");
        (a, b) = (tmux_counts_past(&sock, "lpm:0", a + 3, &when), tmux_counts_past(&sock, "lpm:1", b + 3, &when));
    }
    println!("tmux: counts {a} and {b}, downtime {downtimes:?} ms");
}

// ------------------------------------------------------------ kv service

/// The kv service and its checking client.
struct Kv {
    /// The client's index in the lab.
    client: usize,
    /// Where the client counts the answers it checked.
    progress: PathBuf,
}

impl Kv {
    /// Answers the client has checked so far.
    fn answers(&self) -> u64 {
        std::fs::read_to_string(&self.progress).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
    }

    /// Waits until the client has checked `more` answers beyond `from`
    /// (the service does new work), or fails with the client's output.
    fn wait_answers(&self, lab: &mut TestLab, from: u64, more: u64, when: &str) {
        let t = Instant::now();
        while self.answers() < from + more {
            if t.elapsed() > Duration::from_secs(20) {
                let seen = self.answers();
                let (_, text) = lab.finish_client(self.client);
                panic!("{when}: the client checked {} answers in 20 s, expected {more}; client: {text}", seen.saturating_sub(from));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Starts the kv service (64 MiB of ballast) on h1 and its checking
/// client in the client namespace, once the client has its first
/// answers.
fn kv_with_client(lab: &mut TestLab) -> Kv {
    let argv: Vec<String> = ["python3", SERVICE, "7000", "64"].iter().map(|s| s.to_string()).collect();
    lab.create("kv", "h1", Some("1G"), &argv).unwrap();
    lab.wait_log("kv", "listening", Duration::from_secs(20));
    let ip = lab.ip_of("kv");
    let progress = lab.vol.join("kv-client.progress");
    let client = lab.client_cmd(&["python3", CLIENT, &ip, "7000", "600", &progress.to_string_lossy()]);
    let kv = Kv { client: lab.start_client(client), progress };
    kv.wait_answers(lab, 0, 20, "before the first move");
    kv
}

/// The client's summary: (requests, errors, longest wait in ms).
fn kv_summary(text: &str) -> (u64, u64, f64) {
    let line = text.lines().find(|l| l.starts_with("requests ")).unwrap_or_else(|| panic!("no summary from the client: {text}"));
    let w: Vec<&str> = line.split_whitespace().collect();
    (w[1].parse().unwrap(), w[3].parse().unwrap(), w[5].parse().unwrap())
}

/// The Python kv service moved h1 → h2 → h1 while its client checks every
/// answer over one connection: no error.
#[test]
fn kv_service_moves_there_and_back() {
    let mut lab = TestLab::up("kv", 2);
    let kv = kv_with_client(&mut lab);
    for to in ["h2", "h1"] {
        moved(&lab, "kv", to);
        assert_eq!(lab.host_of("kv"), to);
        let at = kv.answers();
        kv.wait_answers(&mut lab, at, 50, &format!("after the move to {to}"));
    }
    let (ok, text) = lab.finish_client(kv.client);
    assert!(ok && text.contains("errors 0"), "the client saw an error: {text}");
    let (n, _, longest) = kv_summary(&text);
    assert!(n > 100, "the client made only {n} requests: {text}");
    println!("kv: {n} requests, longest wait {longest} ms");
}

/// 20 migrations in a row of the kv service under its client's load: all
/// complete, the client sees no error; prints each downtime and the
/// client's longest wait.
#[test]
fn kv_service_twenty_migrations_under_load() {
    let mut lab = TestLab::up("kv20", 2);
    let kv = kv_with_client(&mut lab);
    let mut rows: BTreeMap<usize, (String, f64, f64)> = BTreeMap::new();
    for i in 1..=20 {
        let to = if i % 2 == 1 { "h2" } else { "h1" };
        let r = match lab.migrate("kv", to) {
            Moved::Completed(r) => r,
            Moved::Failed(e) => {
                let (_, text) = lab.finish_client(kv.client);
                panic!(
                    "migration {i} (to {to}) failed: {e}\n{to}'s agent log:\n{}\ntasks stuck under {to}'s agent:\n{}\nclient: {text}",
                    lab.lpmd_log_tail(to, 10),
                    stuck_under(&lab, to, "kv")
                );
            }
        };
        assert_eq!(lab.host_of("kv"), to, "after migration {i}");
        rows.insert(i, (to.to_string(), r["downtime_ms"].as_f64().unwrap_or(-1.0), r["total_ms"].as_f64().unwrap_or(-1.0)));
        // The moved service answers new requests before it moves again.
        let at = kv.answers();
        kv.wait_answers(&mut lab, at, 25, &format!("after migration {i} (to {to})"));
    }
    let (ok, text) = lab.finish_client(kv.client);
    let mut table = String::from(" #  to   downtime ms   total ms\n");
    for (i, (to, down, total)) in &rows {
        let _ = writeln!(table, "{i:>2}  {to}  {down:>11.1}  {total:>9.1}");
    }
    let worst = rows.values().map(|r| r.1).fold(0.0, f64::max);
    let _ = writeln!(table, "longest downtime {worst:.1} ms; client: {}", text.lines().next().unwrap_or(""));
    println!("{table}");
    assert!(ok && text.contains("errors 0"), "the client saw an error:\n{table}\n{text}");
    let (n, _, longest) = kv_summary(&text);
    assert!(n > 500, "the client made only {n} requests over 20 migrations: {text}");
    println!("kv x20: {n} requests, longest client wait {longest} ms");
}

// ------------------------------------------------------------ PostgreSQL

/// The bin directory of the newest PostgreSQL server Debian installed.
fn pg_bin() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, b): &(u32, PathBuf)| b.join("postgres").exists())
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).expect("PostgreSQL is not installed under /usr/lib/postgresql: run scripts/setup.sh")
}

/// The argv prefix that runs a command as the `postgres` user (the
/// server refuses to run as root).
const AS_POSTGRES: [&str; 5] = ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"];

/// What one client thread saw: the keys of the inserts acknowledged, how
/// many, and its longest wait for one (connection and all, for a client
/// that connects per insert).
struct PgSeen {
    acked: Vec<i64>,
    longest_ms: f64,
}

/// The clients' load on the server: threads in the client namespace.
struct PgLoad {
    stop: Arc<AtomicBool>,
    /// Acknowledged inserts per client.
    counts: Vec<Arc<AtomicU64>>,
    /// The longest wait (µs) of any client since the test last took it.
    window_us: Arc<AtomicU64>,
    threads: Vec<(String, std::thread::JoinHandle<Result<PgSeen, String>>)>,
}

/// The connect and read timeout of the clients: far above any downtime,
/// so a client that waits that long fails the test instead of hanging.
const PG_CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

impl PgLoad {
    fn new() -> PgLoad {
        PgLoad { stop: Arc::new(AtomicBool::new(false)), counts: Vec::new(), window_us: Arc::new(AtomicU64::new(0)), threads: Vec::new() }
    }

    /// Starts client `id` in the client namespace: one connection held
    /// for all its inserts, or (`reconnect`) a new connection for each.
    /// Each insert is the row (id * 10^9 + k, who) of a table `acks`.
    fn start(&mut self, lab: &TestLab, addr: SocketAddr, id: i64, reconnect: bool) {
        let ns = std::fs::File::open(PathBuf::from("/run/netns").join(lab.client_ns())).expect("open the client namespace");
        let (stop, window) = (self.stop.clone(), self.window_us.clone());
        let count = Arc::new(AtomicU64::new(0));
        self.counts.push(count.clone());
        let who = if reconnect { format!("client {id} (a connection per insert)") } else { format!("client {id} (one connection)") };
        let t = std::thread::spawn(move || -> Result<PgSeen, String> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("join the client namespace: {e}"))?;
            let mut held = if reconnect { None } else { Some(Pg::connect(addr, PG_CLIENT_TIMEOUT)?) };
            let mut seen = PgSeen { acked: Vec::new(), longest_ms: 0.0 };
            let mut k = 0i64;
            while !stop.load(Ordering::Relaxed) {
                k += 1;
                let n = id * 1_000_000_000 + k;
                let sql = format!("INSERT INTO acks VALUES ({n}, {id})");
                let t = Instant::now();
                match held.as_mut() {
                    Some(pg) => pg.query(&sql).map_err(|e| format!("insert {n}: {e}"))?,
                    None => {
                        let mut pg = Pg::connect(addr, PG_CLIENT_TIMEOUT).map_err(|e| format!("insert {n}: {e}"))?;
                        let r = pg.query(&sql).map_err(|e| format!("insert {n}: {e}"))?;
                        pg.close().map_err(|e| format!("after insert {n}: {e}"))?;
                        r
                    }
                };
                let waited = t.elapsed();
                seen.acked.push(n);
                seen.longest_ms = seen.longest_ms.max(waited.as_secs_f64() * 1e3);
                window.fetch_max(waited.as_micros() as u64, Ordering::Relaxed);
                count.fetch_add(1, Ordering::Relaxed);
            }
            if let Some(pg) = held {
                pg.close()?;
            }
            Ok(seen)
        });
        self.threads.push((who, t));
    }

    /// Waits until every client has `more` inserts acknowledged beyond
    /// `from` (its counts then); fails with the first client that ended.
    fn wait_progress(&mut self, lab: &TestLab, from: &[u64], more: u64, when: &str) {
        let t = Instant::now();
        while self.counts.iter().zip(from).any(|(c, &f)| c.load(Ordering::Relaxed) < f + more) {
            if let Some(i) = self.threads.iter().position(|(_, t)| t.is_finished()) {
                let (who, t) = self.threads.remove(i);
                panic!(
                    "{when}: {who} ended: {:?}\nthe server's log:\n{}",
                    t.join().map(|r| r.map(|s| s.acked.len())),
                    tail(&lab.logs("pg"), 30)
                );
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "{when}: the clients made no progress in 30 s: {:?} from {from:?}\nthe server's log:\n{}",
                self.now(),
                tail(&lab.logs("pg"), 30)
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn now(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// Stops the clients; what each saw, or the first error one met.
    fn finish(mut self) -> Vec<(String, PgSeen)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        let mut errors = Vec::new();
        for (who, t) in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(s)) => out.push((who, s)),
                Ok(Err(e)) => errors.push(format!("{who}: {e}")),
                Err(_) => errors.push(format!("{who} panicked")),
            }
        }
        assert!(errors.is_empty(), "clients saw errors:\n{}", errors.join("\n"));
        out
    }
}

/// A PostgreSQL server (Debian's package) in a partition, holding a
/// table of 100 000 rows, moved h1 → h2 → h1 → h2 while clients in the
/// client namespace insert rows: one over a connection it holds, four
/// with a new connection for every insert (so the postmaster's listener
/// keeps accepting, and handshakes and closing connections meet the
/// stops). No client may see an error; after every move each client
/// goes on; at the end the 100 000 rows' checksum is the one before,
/// and every insert a client saw acknowledged is there. Prints per
/// migration the downtime and the clients' longest wait.
#[test]
fn postgres_moves_three_times_under_inserts_and_reconnects() {
    let started = Instant::now();
    let bin = pg_bin();
    let lab = TestLab::up("pg", 2);
    let data = lab.vol.join("pgdata");
    std::fs::create_dir_all(&data).unwrap();
    let st = Command::new("chown").arg("postgres:postgres").arg(&data).status().expect("chown");
    assert!(st.success(), "chown of {}", data.display());
    let initdb = bin.join("initdb");
    let out = Command::new(AS_POSTGRES[0])
        .args(&AS_POSTGRES[1..])
        .arg(&initdb)
        .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--no-instructions", "-D"])
        .arg(&data)
        .output()
        .expect("run initdb");
    assert!(out.status.success(), "initdb: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let mut hba = std::fs::OpenOptions::new().append(true).open(data.join("pg_hba.conf")).unwrap();
    writeln!(hba, "host all all 0.0.0.0/0 trust").unwrap();
    drop(hba);
    let mut argv: Vec<String> = AS_POSTGRES.iter().map(|s| s.to_string()).collect();
    argv.push(bin.join("postgres").to_string_lossy().into_owned());
    argv.extend(["-D".to_string(), data.to_string_lossy().into_owned()]);
    // Small shared buffers (the test's rows fit), no huge pages (none are
    // reserved), no unix socket (the clients come over the network), and
    // no fsync: the moves keep the server's memory and its page cache
    // writes, durability on disk is not what is tested.
    for c in [
        "listen_addresses=*",
        "port=5432",
        "unix_socket_directories=",
        "shared_buffers=16MB",
        "huge_pages=off",
        "fsync=off",
        "max_connections=40",
    ] {
        argv.extend(["-c".to_string(), c.to_string()]);
    }
    lab.create("pg", "h1", Some("1G"), &argv).unwrap();
    lab.wait_log("pg", "database system is ready to accept connections", Duration::from_secs(30));
    let ip = lab.ip_of("pg");
    let addr: SocketAddr = format!("{ip}:5432").parse().unwrap();

    let setup = {
        let ns = std::fs::File::open(PathBuf::from("/run/netns").join(lab.client_ns())).unwrap();
        std::thread::spawn(move || -> Result<String, String> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            let mut pg = Pg::connect(addr, PG_CLIENT_TIMEOUT)?;
            pg.query("CREATE TABLE orig (id integer PRIMARY KEY, v text NOT NULL)")?;
            pg.query("INSERT INTO orig SELECT g, md5(g::text) FROM generate_series(1, 100000) g")?;
            pg.query("CREATE TABLE acks (n bigint PRIMARY KEY, client integer NOT NULL)")?;
            let sum = pg.value(PG_CHECKSUM)?;
            pg.close()?;
            Ok(sum)
        })
    };
    let before = setup.join().unwrap().unwrap_or_else(|e| panic!("load the table: {e}"));
    assert!(before.starts_with("100000 "), "the table: {before}");

    let mut load = PgLoad::new();
    load.start(&lab, addr, 1, false);
    for id in 2..=5 {
        load.start(&lab, addr, id, true);
    }
    load.wait_progress(&lab, &[0; 5], 20, "before the first move");
    let mut table =
        String::from(" #  to   downtime ms   total ms   clients' longest wait ms   drain ms   restops   freeze ms   restore ms\n");
    for (i, to) in ["h2", "h1", "h2"].into_iter().enumerate() {
        load.window_us.store(0, Ordering::Relaxed);
        let r = moved(&lab, "pg", to);
        assert_eq!(lab.host_of("pg"), to);
        let at = load.now();
        load.wait_progress(&lab, &at, 20, &format!("after the move to {to}"));
        let stop = &r["stop"];
        let _ = writeln!(
            table,
            "{:>2}  {to}  {:>11.1}  {:>9.1}  {:>24.1}  {:>9.1}  {:>8}  {:>10.1}  {:>11.1}",
            i + 1,
            r["downtime_ms"].as_f64().unwrap_or(-1.0),
            r["total_ms"].as_f64().unwrap_or(-1.0),
            load.window_us.load(Ordering::Relaxed) as f64 / 1e3,
            stop["drain_ms"].as_f64().unwrap_or(-1.0),
            stop["restops"].as_u64().unwrap_or(0),
            stop["freeze_ms"].as_f64().unwrap_or(-1.0),
            stop["restore_ms"].as_f64().unwrap_or(-1.0),
        );
    }
    let seen = load.finish();
    // A process of the server that crashed after a move (the postmaster
    // restarts them all) is a wrong restore even if no client noticed.
    let log = lab.logs("pg");
    assert!(!log.contains("terminated by signal") && !log.contains("server process"), "a server process died:\n{}", tail(&log, 30));

    let check = {
        let ns = std::fs::File::open(PathBuf::from("/run/netns").join(lab.client_ns())).unwrap();
        std::thread::spawn(move || -> Result<(String, Vec<i64>), String> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string())?;
            let mut pg = Pg::connect(addr, PG_CLIENT_TIMEOUT)?;
            let sum = pg.value(PG_CHECKSUM)?;
            let rows = pg.query("SELECT n FROM acks ORDER BY n")?;
            pg.close()?;
            let ns =
                rows.iter().map(|r| r[0].as_deref().unwrap_or("").parse::<i64>().map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
            Ok((sum, ns))
        })
    };
    let (after, present) = check.join().unwrap().unwrap_or_else(|e| panic!("read the tables back: {e}"));
    assert_eq!(after, before, "the checksum of the 100 000 rows changed across the moves");
    let present: std::collections::BTreeSet<i64> = present.into_iter().collect();
    let mut total = 0;
    for (who, s) in &seen {
        let lost: Vec<&i64> = s.acked.iter().filter(|n| !present.contains(n)).collect();
        assert!(lost.is_empty(), "{who}: {} acknowledged inserts are missing, the first {:?}", lost.len(), &lost[..lost.len().min(10)]);
        total += s.acked.len();
        let _ = writeln!(table, "{who}: {} inserts acknowledged, longest wait {:.1} ms", s.acked.len(), s.longest_ms);
    }
    let _ = writeln!(table, "{total} inserts, none lost; checksum {after}; the test took {:.1} s", started.elapsed().as_secs_f64());
    println!("postgres:\n{table}");
}

/// The row count and an md5 over the original rows, in order.
const PG_CHECKSUM: &str = "SELECT count(*) || ' ' || md5(string_agg(id::text || ':' || v, ',' ORDER BY id)) FROM orig";

/// A partition holding hugetlbfs areas (zdtm mem_hugetlb) is refused by
/// the target's validation while the pool of huge pages has too few free
/// for its restore, before anything moves: the refusal names the huge
/// pages, the partition runs on at its source. With pages enough it then
/// moves there and back and passes. The test has the pool to itself
/// while it runs (`Exclusive`), so that what is free is what it left.
#[test]
fn hugetlb_partition_waits_for_free_huge_pages_on_the_target() {
    use common::hugepages::Exclusive;
    // The program as PROGS has it, without the runner's reservation: the
    // test makes the pool itself.
    static BARE: Prog = zdtm_progs::prog("mem_hugetlb", zdtm_progs::Launch::C, true, 3);
    // What the program holds: its private area reserved whole (3), the
    // child's copy of a page (1), the shared object (2).
    const HELD: u64 = 6;
    let mut pool = Exclusive::take(HELD, Duration::from_secs(900)).unwrap_or_else(|e| panic!("huge pages for zdtm mem_hugetlb: {e}"));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let build_dir = DirGuard(std::env::temp_dir().join(format!("lpm-hugetlb-build-{}-{nanos}", std::process::id())));
    std::fs::create_dir_all(&build_dir.0).unwrap();
    let bin = zdtm_progs::build(&BARE, &build_dir.0).unwrap_or_else(|e| panic!("{e}"));
    let lab = TestLab::up("hugetlb", 2);
    let mut run = ZRun::new(&BARE, &lab);
    let mut listeners = Vec::new();
    run.start(&lab, Some(&bin), &outer_ns(), &mut listeners).unwrap_or_else(|e| panic!("start mem_hugetlb: {e}"));
    run.wait_ready(&lab).unwrap_or_else(|e| panic!("mem_hugetlb: {e}"));
    let (free, how) = lpm_engine::hugetlb::available(2 << 20);
    assert!(
        free < 8,
        "the pool has {free} huge pages free besides the program's ({how}): a restore needing 8 would fit, nothing to refuse"
    );
    match lab.migrate(&run.name, "h2") {
        Moved::Completed(_) => panic!("the migration completed with {free} free huge pages, where the restore needs 8"),
        Moved::Failed(e) => {
            assert!(
                e.contains("huge pages") && e.contains("8 huge pages of 2048 kB needed"),
                "the refusal does not name the huge pages: {e}"
            );
        }
    }
    let (host, state) = (lab.host_of(&run.name), lab.state_of(&run.name));
    assert!(host == "h1" && state == "running", "after the refused migration the partition is {state} on {host}");
    // A restored copy reserves 8, twice while one moves back.
    pool.grow(16).unwrap_or_else(|e| panic!("huge pages for the moves: {e}"));
    run.migrate(&lab);
    run.verdict(&lab);
    assert!(run.problems.is_empty(), "mem_hugetlb moved there and back: {}", run.problems.join("\n"));
    assert_eq!(run.verdict, "PASS", "mem_hugetlb after the moves");
}
