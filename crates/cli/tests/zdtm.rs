//! The zdtm suite: small programs, each holding one kind of state, replayed
//! through `lpm checkpoint` and `lpm restore` (after CRIU's zdtm).
//!
//! The programs and their protocol are in `tests/zdtm/` (README.md there).
//! Per program, two tests in a module named after it:
//! - `restore_3x`: start, wait ready, then three times in a row checkpoint
//!   (the tree is killed), reap it, restore it (same pids); finally SIGTERM
//!   the root and expect PASS.
//! - `leave_running`: checkpoint with `--leave-running`; the original must
//!   run on untouched and pass its own verification; then restore from those
//!   images and expect PASS again.
//!
//! Around every checkpoint and restore the runner compares the tree (pids and
//! thread ids) and, like zdtm.py, the state visible from /proc (maps, fds,
//! ids, signal sets, capabilities, limits...). After every restore, a
//! program that does rounds of new work on request (new_work) is asked for
//! one and must report it passed.
//!
//! Two more tests need no engine: `programs_verify_without_checkpoint` (every
//! program passes its own verification) and `programs_detect_sabotage` (every
//! program reports FAIL when ZDTM_SABOTAGE breaks a piece of its state).
//!
//! The test process is a child subreaper, so restored trees are reparented
//! to it and reaped by it. Every run owns a temp dir under
//! `std::env::temp_dir()` named after the program, the scenario, the pid and
//! the time; the guard kills every process of the run and removes the dir
//! even when the test fails (set LPM_ZDTM_KEEP=1 to keep the dir).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod common;
use common::zdtm_progs::*;

const LPM: &str = env!("CARGO_BIN_EXE_lpm");
const READY_TIMEOUT: Duration = Duration::from_secs(20);
const RESULT_TIMEOUT: Duration = Duration::from_secs(30);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
const GONE_TIMEOUT: Duration = Duration::from_secs(10);
const LPM_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a restored or left-running tree runs before the next step.
const SETTLE: Duration = Duration::from_millis(300);
const POLL: Duration = Duration::from_millis(10);

type Res<T> = Result<T, String>;

fn errno() -> io::Error {
    io::Error::last_os_error()
}

/// Makes this process a child subreaper (once): restored trees, whose
/// restorer exits, are reparented to it, so it can reap them.
fn become_subreaper() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer and touches no memory.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(r, 0, "PR_SET_CHILD_SUBREAPER: {}", errno());
    });
}

fn unique_dir(label: &str) -> Res<PathBuf> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!("lpm-zdtm-{label}-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The harness's own namespaces, for ns_tree to compare with.
fn outer_ns() -> String {
    ["mnt", "net", "uts", "ipc", "pid"]
        .iter()
        .map(|k| {
            let ino = fs::metadata(format!("/proc/self/ns/{k}")).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
            format!("{k}:{ino}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// One /proc scan: pid -> ppid.
fn ppids() -> BTreeMap<i32, i32> {
    let mut out = BTreeMap::new();
    let Ok(dir) = fs::read_dir("/proc") else { return out };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(st) = stat_fields(pid, None) {
            out.insert(pid, st.ppid);
        }
    }
    out
}

struct Stat {
    state: char,
    ppid: i32,
    pgrp: i32,
    session: i32,
}

/// The fields of /proc/PID[/task/TID]/stat after the command name.
fn stat_fields(pid: i32, tid: Option<i32>) -> Option<Stat> {
    let path = match tid {
        Some(t) => format!("/proc/{pid}/task/{t}/stat"),
        None => format!("/proc/{pid}/stat"),
    };
    let text = fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
    })
}

fn exists(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Reaps pid if it is a zombie child of this process; true if reaped now.
fn reap(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: waitpid writes only to the status int we pass.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    r == pid
}

/// The process tree: pid -> thread ids.
type Tree = BTreeMap<i32, BTreeSet<i32>>;

fn tree_of(root: i32) -> Tree {
    let pp = ppids();
    let mut tree = Tree::new();
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        if !pp.contains_key(&pid) {
            continue;
        }
        let tids = fs::read_dir(format!("/proc/{pid}/task"))
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())).collect())
            .unwrap_or_default();
        tree.insert(pid, tids);
        todo.extend(pp.iter().filter(|(_, &ppid)| ppid == pid).map(|(&p, _)| p));
    }
    tree
}

fn fmt_tree(tree: &Tree) -> String {
    tree.iter()
        .map(|(pid, tids)| {
            let name = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("{pid} ({}) threads {:?}", name.trim(), tids)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Maps with adjacent areas that differ only in their boundaries merged (a
/// restore may split or merge areas differently; zdtm.py does the same), and
/// the inode numbers a restore cannot keep cleared.
fn normalized_maps(pid: i32) -> String {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/maps")) else {
        return "maps: <unreadable>\n".into();
    };
    struct Area {
        start: u64,
        end: u64,
        perms: String,
        off: u64,
        dev: String,
        ino: u64,
        path: String,
    }
    let mut areas: Vec<Area> = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(6, ' ');
        let range = f.next().unwrap_or("");
        let (s, e) = range.split_once('-').unwrap_or(("0", "0"));
        let a = Area {
            start: u64::from_str_radix(s, 16).unwrap_or(0),
            end: u64::from_str_radix(e, 16).unwrap_or(0),
            perms: f.next().unwrap_or("").into(),
            off: u64::from_str_radix(f.next().unwrap_or("0"), 16).unwrap_or(0),
            dev: f.next().unwrap_or("").into(),
            ino: f.next().unwrap_or("0").parse().unwrap_or(0),
            path: f.next().unwrap_or("").trim().into(),
        };
        if let Some(p) = areas.last_mut() {
            if p.end == a.start
                && p.perms == a.perms
                && p.dev == a.dev
                && p.ino == a.ino
                && p.path == a.path
                && (a.ino == 0 || p.off + (p.end - p.start) == a.off)
            {
                p.end = a.end;
                continue;
            }
        }
        areas.push(a);
    }
    let mut out = String::new();
    for mut a in areas {
        // A deleted file or an anonymous shared area (shmem, shown as
        // "/dev/zero (deleted)") is a new inode after a restore.
        if a.path.ends_with(" (deleted)") {
            a.ino = 0;
        }
        let _ = writeln!(out, "  map {:x}-{:x} {} {:x} {} {} {}", a.start, a.end, a.perms, a.off, a.dev, a.ino, a.path);
    }
    out
}

/// `pipe:[123]` -> `pipe`: kernel object numbers change across a restore
/// (a restored namespace is a new one: ns_fds checks which it names).
fn normalize_link(link: &str) -> String {
    for kind in ["pipe:[", "socket:[", "net:[", "uts:[", "ipc:[", "mnt:[", "pid:["] {
        if link.starts_with(kind) {
            return kind.trim_end_matches(":[").into();
        }
    }
    // A restored pty gets the index the host's devpts gives it.
    if link.starts_with("/dev/pts/") {
        return "/dev/pts/".into();
    }
    link.into()
}

const STATUS_KEYS: &[&str] = &[
    "Name",
    "Umask",
    "Tgid",
    "PPid",
    "TracerPid",
    "Uid",
    "Gid",
    "Groups",
    "NStgid",
    "NSpid",
    "NSpgid",
    "NSsid",
    "SigPnd",
    "ShdPnd",
    "SigBlk",
    "SigIgn",
    "SigCgt",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Seccomp_filters",
    "THP_enabled",
];

/// What a tree looks like from outside, as text (zdtm.py's visible state).
fn visible_state(tree: &Tree, stable: bool, log: &Path) -> String {
    let log = log.to_string_lossy();
    let mut out = String::new();
    for (&pid, tids) in tree {
        let _ = match stat_fields(pid, None) {
            Some(s) => writeln!(out, "process {pid}: ppid {} pgrp {} session {}", s.ppid, s.pgrp, s.session),
            None => writeln!(out, "process {pid}: gone"),
        };
        for link in ["exe", "cwd", "root"] {
            let target = fs::read_link(format!("/proc/{pid}/{link}"));
            let _ = writeln!(out, "  {link} {:?}", target.map_err(|e| e.kind()));
        }
        for file in ["cmdline", "environ", "personality", "limits"] {
            let text = fs::read(format!("/proc/{pid}/{file}"));
            let _ = writeln!(out, "  {file} {:?}", text.map(|t| String::from_utf8_lossy(&t).into_owned()));
        }
        if stable {
            out.push_str(&normalized_maps(pid));
        }
        let mut fds: Vec<i32> = fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.flatten().filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())).collect())
            .unwrap_or_default();
        fds.sort();
        for fd in fds {
            let link = fs::read_link(format!("/proc/{pid}/fd/{fd}"))
                .map(|l| normalize_link(&l.to_string_lossy()))
                .unwrap_or_else(|e| format!("<{e}>"));
            let info = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).unwrap_or_default();
            let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string()).unwrap_or_default();
            let pos = if stable && !link.starts_with(&*log) { field("pos:") } else { "-".into() };
            let _ = writeln!(out, "  fd {fd} -> {link} pos {pos} flags {}", field("flags:"));
        }
        for &tid in tids {
            let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
            let _ = write!(out, "  thread {tid}:");
            for key in STATUS_KEYS {
                let v = status
                    .lines()
                    .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
                    .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                let _ = write!(out, " {key}={v}");
            }
            out.push('\n');
        }
    }
    out
}

/// The lines only in a and only in b, each named by the process section it
/// sits in, so a line that moved from one process to another shows too.
fn diff(a: &str, b: &str) -> String {
    fn keyed(text: &str) -> Vec<String> {
        let mut section = "";
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        text.lines()
            .map(|l| {
                if l.starts_with("process ") {
                    section = l.split(':').next().unwrap_or(l);
                }
                let base = format!("[{section}] {l}");
                let n = seen.entry(base.clone()).or_default();
                *n += 1;
                if *n > 1 {
                    format!("{base} (#{n})")
                } else {
                    base
                }
            })
            .collect()
    }
    let (ka, kb) = (keyed(a), keyed(b));
    let la: BTreeSet<&String> = ka.iter().collect();
    let lb: BTreeSet<&String> = kb.iter().collect();
    let mut out = String::new();
    for l in ka.iter().filter(|l| !lb.contains(l)).take(30) {
        let _ = writeln!(out, "- {l}");
    }
    for l in kb.iter().filter(|l| !la.contains(l)).take(30) {
        let _ = writeln!(out, "+ {l}");
    }
    if out.is_empty() {
        out.push_str("(the same lines in another order)\n");
    }
    out
}

fn tail(path: &Path, max: usize) -> String {
    match fs::read(path) {
        Ok(b) => {
            let start = b.len().saturating_sub(max);
            let cut = if start > 0 { "[...]\n" } else { "" };
            format!("{cut}{}", String::from_utf8_lossy(&b[start..]))
        }
        Err(e) => format!("<{e}>"),
    }
}

/// One run of one program: its temp dir, its processes, its lpm calls.
struct Run {
    prog: &'static Prog,
    label: String,
    dir: PathBuf,
    work: PathBuf,
    log: PathBuf,
    bin: Option<PathBuf>,
    /// Value of ZDTM_RUN in the environment of every process of the run.
    marker: String,
    root: i32,
    /// Every pid ever seen in the tree, for reaping.
    known: BTreeSet<i32>,
    /// The tree's shape when it was last checked.
    tree: Tree,
    /// Processes that were zombies at ready (they must stay zombies).
    zombies: BTreeSet<i32>,
    /// Tasks stopped by a job control signal at ready (stopped.c: they
    /// must stay stopped).
    stopped: BTreeSet<i32>,
    lpm_calls: Vec<(String, PathBuf)>,
    /// Peak memory (ru_maxrss, KiB) of each lpm call that exited.
    lpm_peak_kib: Vec<i64>,
    /// Environment given to the next lpm calls.
    lpm_env: Vec<(String, String)>,
    /// Differences that do not stop the scenario: it runs on to the
    /// program's own verdict, and the test fails with both.
    soft: Vec<String>,
    /// Huge pages held for the program (`Need::HugePages`), given back
    /// after its trees are killed (fields drop after `Drop::drop`).
    _huge: Option<common::hugepages::HugePages>,
}

impl Run {
    /// Checks the needs, makes the dirs and builds the program (unless a
    /// binary built earlier is given).
    fn new(prog: &'static Prog, scenario: &str, prebuilt: Option<&Path>) -> Res<Run> {
        Run::with_pages(prog, scenario, prebuilt, false)
    }

    /// As [`Run::new`], holding the huge pages the program needs by
    /// itself when `alone` (no checkpoint: a run that only gets SIGTERM).
    fn with_pages(prog: &'static Prog, scenario: &str, prebuilt: Option<&Path>, alone: bool) -> Res<Run> {
        become_subreaper();
        check_needs(prog)?;
        let huge = reserve_needs(prog, alone)?;
        let label = format!("{}-{scenario}", prog.name);
        let dir = unique_dir(&label)?;
        let work = dir.join("work");
        let mut run = Run {
            prog,
            label: label.clone(),
            work: work.clone(),
            log: dir.join("program.log"),
            marker: dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            dir,
            bin: None,
            root: 0,
            known: BTreeSet::new(),
            tree: Tree::new(),
            zombies: BTreeSet::new(),
            stopped: BTreeSet::new(),
            lpm_calls: Vec::new(),
            lpm_peak_kib: Vec::new(),
            lpm_env: Vec::new(),
            soft: Vec::new(),
            _huge: huge,
        };
        fs::create_dir(&work).map_err(|e| format!("create {}: {e}", work.display()))?;
        // Programs may drop privileges (creds) and still write their files.
        fs::set_permissions(&work, fs::Permissions::from_mode(0o777)).map_err(|e| format!("chmod {}: {e}", work.display()))?;
        if matches!(prog.launch, Launch::C | Launch::CUnshared | Launch::CIpc | Launch::CNet) {
            run.bin = Some(match prebuilt {
                Some(b) => b.to_path_buf(),
                None => build(prog, &run.dir)?,
            });
        }
        Ok(run)
    }

    fn ready_path(&self) -> PathBuf {
        self.work.join("ready")
    }

    fn result_path(&self) -> PathBuf {
        self.work.join("result")
    }

    /// Starts the program: a session leader, stdin /dev/null, stdout and
    /// stderr to the log, no fds beyond 2, a clean environment.
    fn start(&mut self, sabotage: Option<u32>) -> Res<()> {
        let src = src_dir();
        let mut cmd = match self.prog.launch {
            Launch::C => Command::new(self.bin.as_ref().ok_or("no binary")?),
            Launch::CUnshared => {
                let mut c = Command::new("unshare");
                c.args(["--fork", "--pid", "--mount-proc", "--net", "--uts", "--ipc"]);
                c.arg(self.bin.as_ref().ok_or("no binary")?);
                c
            }
            Launch::CIpc => {
                let mut c = Command::new("unshare");
                c.arg("--ipc").arg(self.bin.as_ref().ok_or("no binary")?);
                c
            }
            Launch::CNet => {
                let mut c = Command::new("unshare");
                c.arg("--net").arg(self.bin.as_ref().ok_or("no binary")?);
                c
            }
            Launch::Python => {
                let mut c = Command::new("python3");
                c.arg(src.join(format!("{}.py", self.prog.name)));
                c
            }
            Launch::Shell => {
                let mut c = Command::new("sh");
                c.arg(src.join(format!("{}.sh", self.prog.name)));
                c
            }
        };
        let log = OpenOptions::new().create(true).append(true).open(&self.log).map_err(|e| format!("open {}: {e}", self.log.display()))?;
        let log2 = log.try_clone().map_err(|e| format!("dup log: {e}"))?;
        let path = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        cmd.env_clear()
            .env("PATH", path)
            .env("LC_ALL", "C")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("ZDTM_READY", self.ready_path())
            .env("ZDTM_RESULT", self.result_path())
            .env("ZDTM_RUN", &self.marker)
            .env("ZDTM_OUTER_NS", outer_ns())
            .current_dir(&self.work)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        if let Some(n) = sabotage {
            cmd.env("ZDTM_SABOTAGE", n.to_string());
        }
        // SAFETY: the closure runs in the forked child before exec and only
        // makes async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Whatever fds the test runner leaked must not reach the
                // program (files checks its exact fd set): close them at exec.
                if libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("start {}: {e}", self.prog.name))?;
        self.root = child.id() as i32;
        self.known.insert(self.root);
        // The child is reaped by pid (waitpid) like the restored ones.
        drop(child);
        Ok(())
    }

    /// Exit status of the root if it has exited (reaping it).
    fn root_exited(&self) -> Option<i32> {
        let mut status = 0;
        // SAFETY: waitpid writes only to the status int we pass.
        let r = unsafe { libc::waitpid(self.root, &mut status, libc::WNOHANG) };
        (r == self.root).then_some(status)
    }

    fn wait_ready(&mut self) -> Res<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if fs::read_to_string(self.ready_path()).is_ok_and(|s| s == "ready\n") {
                self.tree = tree_of(self.root);
                self.known.extend(self.tree.keys());
                self.zombies = self.tree.keys().copied().filter(|&p| stat_fields(p, None).is_some_and(|s| s.state == 'Z')).collect();
                self.stopped = self
                    .tree
                    .iter()
                    .flat_map(|(&pid, tids)| tids.iter().map(move |&t| (pid, t)))
                    .filter(|&(pid, t)| stat_fields(pid, Some(t)).is_some_and(|s| s.state == 'T'))
                    .map(|(_, t)| t)
                    .collect();
                return Ok(());
            }
            if let Some(status) = self.root_exited() {
                return Err(format!("the program exited before ready ({})", fmt_status(status)));
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within {READY_TIMEOUT:?}"));
            }
            sleep(POLL);
        }
    }

    /// Runs lpm with a timeout; returns its stdout. Its stderr goes to a file
    /// shown in the failure report.
    fn lpm(&mut self, args: &[&str]) -> Res<String> {
        let n = self.lpm_calls.len() + 1;
        let err_path = self.dir.join(format!("lpm-{n}-{}.stderr", args[0]));
        let out_path = self.dir.join(format!("lpm-{n}-{}.stdout", args[0]));
        let line = format!("lpm {}", args.join(" "));
        self.lpm_calls.push((line.clone(), err_path.clone()));
        let create = |p: &Path| File::create(p).map_err(|e| format!("create {}: {e}", p.display()));
        let mut child = Command::new(LPM)
            .args(args)
            .envs(self.lpm_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(create(&out_path)?)
            .stderr(create(&err_path)?)
            .spawn()
            .map_err(|e| format!("{line}: {e}"))?;
        let deadline = Instant::now() + LPM_TIMEOUT;
        // Reaped by wait4 rather than through `child`, for its peak memory.
        let pid = child.id() as i32;
        let status = loop {
            let mut status = 0;
            // SAFETY: all-zero bytes are a valid rusage.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4 on our own child, writing into two locals.
            match unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) } {
                r if r == pid => {
                    self.lpm_peak_kib.push(ru.ru_maxrss);
                    break status;
                }
                0 if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{line}: no exit within {LPM_TIMEOUT:?}, killed"));
                }
                0 => sleep(POLL),
                _ => return Err(format!("{line}: wait: {}", errno())),
            }
        };
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        if status != 0 {
            return Err(format!("{line}: {}", fmt_status(status)));
        }
        Ok(stdout)
    }

    fn checkpoint(&mut self, images: &Path, leave_running: bool) -> Res<()> {
        let pid = self.root.to_string();
        let images = images.to_string_lossy().into_owned();
        let mut args = vec!["checkpoint", "--pid", &pid, "--images", &images];
        if leave_running {
            args.push("--leave-running");
        }
        self.lpm(&args).map(|_| ())
    }

    /// Restores and checks the root comes back with its pid, as a child of
    /// this process (the subreaper).
    fn restore(&mut self, images: &Path) -> Res<()> {
        let images = images.to_string_lossy().into_owned();
        let out = self.lpm(&["restore", "--images", &images, "--detach", "--verify"])?;
        let pid: i32 = out.trim().parse().map_err(|_| format!("lpm restore printed {out:?}, not the root pid"))?;
        self.known.insert(pid);
        if pid != self.root {
            return Err(format!("restored root has pid {pid}, the original had {}", self.root));
        }
        let ppid = stat_fields(pid, None).map(|s| s.ppid);
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        if ppid != Some(me) {
            return Err(format!("restored root {pid} has parent {ppid:?}, not the harness {me} (a child subreaper)"));
        }
        Ok(())
    }

    /// Waits until every process and thread of tree is gone, reaping the
    /// zombies that are this process's children.
    fn wait_gone(&mut self, tree: &Tree, what: &str) -> Res<()> {
        let ids: BTreeSet<i32> = tree.iter().flat_map(|(p, t)| t.iter().chain([p])).copied().collect();
        let deadline = Instant::now() + GONE_TIMEOUT;
        loop {
            for &pid in tree.keys() {
                reap(pid);
            }
            let alive: Vec<String> = ids
                .iter()
                .filter(|&&id| exists(id))
                .map(|&id| {
                    let state = stat_fields(id, None).map(|s| s.state).unwrap_or('?');
                    format!("{id} (state {state})")
                })
                .collect();
            if alive.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("{what}: still present after {GONE_TIMEOUT:?}: {}", alive.join(", ")));
            }
            sleep(POLL);
        }
    }

    /// Checks every task of the tree is alive, not stopped (unless it was
    /// at ready, and then still is) and not traced.
    fn check_running(&self, tree: &Tree, what: &str) -> Res<()> {
        for (&pid, tids) in tree {
            for &tid in tids {
                let st = stat_fields(pid, Some(tid)).ok_or_else(|| format!("{what}: task {tid} of {pid} is gone"))?;
                // A zombie since ready (zombie.c) stays one.
                let was_zombie = self.zombies.contains(&tid);
                let was_stopped = self.stopped.contains(&tid);
                if was_stopped != (st.state == 'T') {
                    return Err(format!("{what}: task {tid} of {pid} is in state {} (stopped at ready: {was_stopped})", st.state));
                }
                if matches!(st.state, 'Z' | 'X' | 'x' | 't') && !(st.state == 'Z' && was_zombie) {
                    return Err(format!("{what}: task {tid} of {pid} is in state {}", st.state));
                }
                let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).unwrap_or_default();
                if let Some(tracer) = status.lines().find_map(|l| l.strip_prefix("TracerPid:")) {
                    if tracer.trim() != "0" {
                        return Err(format!("{what}: task {tid} of {pid} is still traced by {}", tracer.trim()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Compares the current tree with the recorded one.
    /// Starts the program, waits until it is ready and checkpoints it,
    /// which must fail: the tree as it was, and lpm's error output.
    fn refused_checkpoint(&mut self) -> Res<(Tree, String)> {
        self.start(None)?;
        self.wait_ready()?;
        let tree = self.check_tree("before checkpoint")?;
        let images = self.dir.join("images");
        if self.checkpoint(&images, false).is_ok() {
            return Err("the checkpoint succeeded".into());
        }
        let (_, stderr) = self.lpm_calls.last().cloned().ok_or("no lpm call")?;
        Ok((tree, fs::read_to_string(&stderr).unwrap_or_default()))
    }

    fn check_tree(&mut self, what: &str) -> Res<Tree> {
        let now = tree_of(self.root);
        self.known.extend(now.keys());
        if now != self.tree {
            return Err(format!("{what}: the tree differs\n  was: {}\n  now: {}", fmt_tree(&self.tree), fmt_tree(&now)));
        }
        Ok(now)
    }

    fn state(&self) -> String {
        visible_state(&self.tree, self.prog.stable, &self.log)
    }

    /// Compares the visible state with before; a difference is recorded as
    /// a soft error so the program still gets to give its verdict.
    fn check_state(&mut self, before: &str, what: &str) {
        let now = self.state();
        if now != before {
            self.soft.push(format!("{what}: the state seen from /proc differs:\n{}", diff(before, &now)));
        }
    }

    /// A round of new work, for the programs that do one on request
    /// ([`Prog::rounds`]): a restored program must be able to do more
    /// than hold its state.
    fn new_work(&mut self, what: &str) -> Res<()> {
        if !self.prog.rounds {
            return Ok(());
        }
        let root = self.root;
        new_work_round(root, &self.work, || stat_fields(root, None).is_some_and(|s| s.state != 'Z')).map_err(|e| format!("{what}: {e}"))
    }

    fn term_target(&self) -> Res<i32> {
        match self.prog.term {
            Term::Root => Ok(self.root),
            Term::OnlyChild => {
                let kids: Vec<i32> = ppids().into_iter().filter(|&(_, pp)| pp == self.root).map(|(p, _)| p).collect();
                match kids[..] {
                    [one] => Ok(one),
                    _ => Err(format!("the root {} has children {kids:?}, expected one", self.root)),
                }
            }
        }
    }

    /// SIGTERM, then the result and the root's exit status; returns the result.
    fn verdict(&mut self) -> Res<String> {
        let target = self.term_target()?;
        // SAFETY: kill takes plain integers.
        if unsafe { libc::kill(target, libc::SIGTERM) } != 0 {
            return Err(format!("SIGTERM {target}: {}", errno()));
        }
        let deadline = Instant::now() + RESULT_TIMEOUT;
        let result = loop {
            if let Ok(r) = fs::read_to_string(self.result_path()) {
                break r;
            }
            if Instant::now() > deadline {
                return Err(format!("no result within {RESULT_TIMEOUT:?} of SIGTERM"));
            }
            sleep(POLL);
        };
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(s) = self.root_exited() {
                break s;
            }
            if Instant::now() > deadline {
                return Err(format!("result {:?} written but the root did not exit", result.trim()));
            }
            sleep(POLL);
        };
        let tree = self.tree.clone();
        self.wait_gone(&tree, "after the root exited, the processes of the tree")?;
        let passed = result == "PASS\n";
        let clean = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == i32::from(!passed);
        if !clean {
            return Err(format!("result {:?} but the root exited with {}", result.trim(), fmt_status(status)));
        }
        Ok(result)
    }

    fn expect_pass(&mut self) -> Res<()> {
        let result = self.verdict()?;
        if result != "PASS\n" {
            return Err(format!("the program reported {}", result.trim()));
        }
        if !self.soft.is_empty() {
            return Err("the program passed, but see above".into());
        }
        Ok(())
    }

    /// The failure report: the error, the result, the log and lpm's stderr.
    fn report(&self, err: &str) -> String {
        let mut out = format!("zdtm {} failed: {err}\n", self.label);
        for soft in &self.soft {
            let _ = writeln!(out, "--- also: {}", soft.trim_end());
        }
        let _ = writeln!(out, "--- result file: {}", tail(&self.result_path(), 4096).trim_end());
        let _ = writeln!(out, "--- program log ({}):\n{}", self.log.display(), tail(&self.log, 16384).trim_end());
        for (line, path) in &self.lpm_calls {
            let _ = writeln!(out, "--- {line}: stderr:\n{}", tail(path, 16384).trim_end());
        }
        out
    }

    /// Kills every process of the run: those whose environment holds the
    /// run's marker and their descendants (never a pid that was merely
    /// seen once: it may have been reused).
    fn kill_all(&mut self) {
        let deadline = Instant::now() + GONE_TIMEOUT;
        let marker = format!("ZDTM_RUN={}\0", self.marker);
        loop {
            let pp = ppids();
            let mut ours: BTreeSet<i32> = pp
                .keys()
                .copied()
                .filter(|pid| {
                    fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.windows(marker.len()).any(|w| w == marker.as_bytes()))
                })
                .collect();
            loop {
                let more: Vec<i32> = pp.iter().filter(|(p, pp)| ours.contains(pp) && !ours.contains(p)).map(|(&p, _)| p).collect();
                if more.is_empty() {
                    break;
                }
                ours.extend(more);
            }
            for &pid in &ours {
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            self.known.extend(&ours);
            for &pid in &self.known {
                reap(pid);
            }
            // SAFETY: getpid has no preconditions.
            let me = unsafe { libc::getpid() };
            let zombies = self.known.iter().any(|&p| stat_fields(p, None).is_some_and(|s| s.ppid == me && s.state == 'Z'));
            if (ours.is_empty() && !zombies) || Instant::now() > deadline {
                break;
            }
            sleep(POLL);
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.kill_all();
        // posix_shm names its object after the run; a program that fails
        // (as its sabotaged runs must) exits before it unlinks it.
        let _ = fs::remove_file(format!("/dev/shm/lpm-zdtm-shm-{}", self.marker));
        if std::env::var_os("LPM_ZDTM_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("zdtm: kept {}", self.dir.display());
        }
    }
}

fn fmt_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status:#x}")
    }
}

/// Start, then three rounds of checkpoint (kill), reap, restore; then PASS.
fn restore_3x(run: &mut Run) -> Res<()> {
    restore_3x_with(run, |_| (), |_| ())
}

/// [`restore_3x`], calling `ready` once the program is ready and
/// `verdict` before it is asked for its verdict.
fn restore_3x_with<T>(run: &mut Run, ready: impl FnOnce(&Run) -> T, verdict: impl FnOnce(T)) -> Res<()> {
    run.start(None)?;
    run.wait_ready()?;
    let during = ready(run);
    for round in 1..=3 {
        let what = |step: &str| format!("round {round}, {step}");
        run.check_running(&run.tree, &what("before checkpoint"))?;
        let tree = run.check_tree(&what("before checkpoint"))?;
        let state = run.state();
        let images = run.dir.join(format!("images-{round}"));
        run.checkpoint(&images, false)?;
        run.wait_gone(&tree, &what("after checkpoint (the tree must be killed)"))?;
        run.restore(&images)?;
        run.check_tree(&what("after restore"))?;
        run.check_state(&state, &what("after restore"));
        sleep(SETTLE);
        run.check_running(&tree, &what("running after restore"))?;
        run.new_work(&what("new work after restore"))?;
    }
    verdict(during);
    run.expect_pass()
}

/// Checkpoint with --leave-running: the original runs on unchanged; a
/// second checkpoint of it (which kills it) restores and passes; then a
/// restore from the first images passes too.
fn leave_running(run: &mut Run) -> Res<()> {
    run.start(None)?;
    run.wait_ready()?;
    let tree = run.check_tree("before checkpoint")?;
    let state = run.state();
    let images = run.dir.join("images");
    run.checkpoint(&images, true)?;
    sleep(SETTLE);
    run.check_running(&tree, "the original after checkpoint --leave-running")?;
    run.check_tree("the original after checkpoint --leave-running")?;
    run.check_state(&state, "the original after checkpoint --leave-running");
    let second = run.dir.join("images-second");
    run.checkpoint(&second, false)?;
    run.wait_gone(&tree, "after the second checkpoint (the tree must be killed)")?;
    run.restore(&second)?;
    run.check_tree("after restoring the second checkpoint")?;
    run.check_state(&state, "after restoring the second checkpoint");
    sleep(SETTLE);
    run.check_running(&tree, "running after restoring the second checkpoint")?;
    run.new_work("new work after restoring the second checkpoint")?;
    run.expect_pass().map_err(|e| format!("restored from the second checkpoint: {e}"))?;
    let result = run.result_path();
    fs::remove_file(&result).map_err(|e| format!("remove {}: {e}", result.display()))?;
    run.wait_gone(&tree, "after the second restore's verification")?;
    run.restore(&images)?;
    run.check_tree("after restore")?;
    run.check_state(&state, "after restore");
    sleep(SETTLE);
    run.check_running(&tree, "running after restore")?;
    run.new_work("new work after restore")?;
    run.expect_pass()
}

fn scenario(name: &str, label: &str, f: fn(&mut Run) -> Res<()>) {
    let prog = find_prog(name);
    let mut run = Run::new(prog, label, None).unwrap_or_else(|e| panic!("zdtm {name}: {e}"));
    if let Err(e) = f(&mut run) {
        panic!("{}", run.report(&e));
    }
}

macro_rules! zdtm_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn restore_3x() {
                super::scenario(stringify!($name), "restore3x", super::restore_3x);
            }

            #[test]
            fn leave_running() {
                super::scenario(stringify!($name), "leaverunning", super::leave_running);
            }
        }
    )*};
}

zdtm_tests!(
    mem_anon,
    mem_shared,
    regs_fpu,
    threads,
    signals,
    files,
    pipes,
    tree,
    process_state,
    creds,
    py_counter,
    py_threads,
    pipeline,
    ns_tree,
    posix_timers,
    itimers,
    sysv_ipc,
    posix_mq,
    posix_shm,
    file_locks,
    sock_unix,
    sock_tcp,
    sock_tcp_closing,
    sock_tcp6,
    sock_netns,
    sock_netlink,
    eventfd,
    timerfd,
    signalfd,
    epoll,
    inotify,
    memfd,
    pidfd,
    zombie,
    seccomp,
    pty,
    pty_session,
    pty_pending,
    stopped,
    sock_unix_closed,
    dev_tty,
    new_work,
    ghost_attrs,
    ghost_fork,
    ghost_links,
    ghost_big,
    ghost_dir,
    ghost_map,
    opath,
    memfd_reopen,
    ghost_nodes,
    ghost_relinked,
    cwd_proc,
    fown,
    fd_table,
    pipe_reopen,
    pipe_full,
    sock_unlinked,
    sock_filter,
    sock_shutdown,
    mem_cow,
    mem_cow_wide,
    mem_madvise,
    mem_fileprot,
    mem_shmem_private,
    sched_policy,
    sched_rt,
    oom_score,
    membarrier,
    zombie_pgrp,
    pty_owner,
    pidfd_dead,
    zombie_core,
    vdso_unmapped,
    ns_fds,
    inotify_deleted,
    fanotify,
    ns_fds_tree,
    sock_scm,
    sock_dgram_bound,
    sock_relative,
    sock_accept_queue,
    sock_ping,
    sock_udplite,
    sock_freebind,
    sock_netlink_peer,
    sock_packet,
    sock_raw,
    sock_reuseport,
    mem_hugetlb,
    mem_hugetlb_memfd,
    mount_masks,
);

/// A checkpoint of a tree holding a message in a unix socket with
/// SO_PASSCRED fails, naming the process, the fd and why; the tree runs
/// on and still reads the message with its credentials.
#[test]
fn passcred_queue_is_refused() {
    let mut run = Run::new(&SOCK_PASSCRED, "refused", None).unwrap_or_else(|e| panic!("zdtm sock_passcred: {e}"));
    let res = (|| -> Res<()> {
        let (tree, msg) = run.refused_checkpoint()?;
        let want = format!("pid {}: unsupported file descriptor: fd 4 -> socket:", run.root);
        if !msg.contains(&want) || !msg.contains("SO_PASSCRED") {
            return Err(format!("the refusal does not name the process, fd and reason: {msg:?}"));
        }
        sleep(SETTLE);
        run.check_running(&tree, "after the refused checkpoint")?;
        run.check_tree("after the refused checkpoint")?;
        run.expect_pass()
    })();
    if let Err(e) = res {
        panic!("{}", run.report(&e));
    }
}

/// The same socket, declared external (`checkpoint --ext-unix-sk`), is
/// dumped; the restore connects it again to the listener's path: the
/// listener accepts a new connection, the old one ended with the original
/// tree, and what the restored program sends arrives on the new one.
#[test]
fn socket_outside_tree_declared_external() {
    let mut run = Run::new(&SOCK_OUTSIDE, "external", None).unwrap_or_else(|e| panic!("zdtm sock_outside: {e}"));
    let res = (|| -> Res<()> {
        use std::io::Read;
        let path = run.work.join("outside.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))?;
        run.start(None)?;
        run.wait_ready()?;
        let (mut first, _) = listener.accept().map_err(|e| format!("accept the program's connection: {e}"))?;
        let tree = run.check_tree("before checkpoint")?;
        let images = run.dir.join("images");
        let (pid, dir) = (run.root.to_string(), images.to_string_lossy().into_owned());
        run.lpm(&["checkpoint", "--pid", &pid, "--images", &dir, "--ext-unix-sk"])?;
        run.wait_gone(&tree, "after checkpoint (the tree must be killed)")?;
        let mut b = [0u8; 1];
        if first.read(&mut b).map_err(|e| format!("read the old connection: {e}"))? != 0 {
            return Err("the old connection carried data instead of ending".into());
        }
        run.restore(&images)?;
        listener.set_nonblocking(true).map_err(|e| format!("set the listener non-blocking: {e}"))?;
        let (mut second, _) = listener.accept().map_err(|e| format!("no new connection after restore: {e}"))?;
        run.expect_pass()?;
        second.read_exact(&mut b).map_err(|e| format!("read the new connection: {e}"))?;
        if b[0] != b'x' {
            return Err(format!("the new connection carried {:?}, not the program's 'x'", b[0] as char));
        }
        Ok(())
    })();
    if let Err(e) = res {
        panic!("{}", run.report(&e));
    }
}

/// A checkpoint of a tree holding a socket connected outside it fails,
/// naming the process, the fd and why; the tree runs on and passes.
#[test]
fn socket_outside_tree_is_refused() {
    let mut run = Run::new(&SOCK_OUTSIDE, "refused", None).unwrap_or_else(|e| panic!("zdtm sock_outside: {e}"));
    let res = (|| -> Res<()> {
        let path = run.work.join("outside.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).map_err(|e| format!("bind {}: {e}", path.display()))?;
        let (tree, msg) = run.refused_checkpoint()?;
        let want = format!("pid {}: unsupported file descriptor: fd 3 -> socket:", run.root);
        if !msg.contains(&want) || !msg.contains("outside the tree") {
            return Err(format!("the refusal does not name the process, fd and reason: {msg:?}"));
        }
        sleep(SETTLE);
        run.check_running(&tree, "after the refused checkpoint")?;
        run.check_tree("after the refused checkpoint")?;
        run.expect_pass()
    })();
    if let Err(e) = res {
        panic!("{}", run.report(&e));
    }
}

/// A checkpoint of a tree holding a descriptor of the host's network
/// namespace fails naming the process, the fd and why; the tree runs on.
#[test]
fn host_namespace_is_refused() {
    let mut run = Run::new(&NS_HOST, "refused", None).unwrap_or_else(|e| panic!("zdtm ns_host: {e}"));
    let res = (|| -> Res<()> {
        let (tree, msg) = run.refused_checkpoint()?;
        let want = format!("pid {}: unsupported file descriptor: fd 3 -> net:", run.root);
        if !msg.contains(&want) || !msg.contains("host's net namespace") {
            return Err(format!("the refusal does not name the process, fd and reason: {msg:?}"));
        }
        sleep(SETTLE);
        run.check_running(&tree, "after the refused checkpoint")?;
        run.check_tree("after the refused checkpoint")?;
        run.expect_pass()
    })();
    if let Err(e) = res {
        panic!("{}", run.report(&e));
    }
}

/// A checkpoint of a process under memory-deny-write-execute
/// (PR_SET_MDWE) fails naming the process, the kind and why; the process
/// runs on, still under it.
#[test]
fn mdwe_is_refused() {
    let mut run = Run::new(&MDWE_REFUSED, "refused", None).unwrap_or_else(|e| panic!("zdtm mdwe_refused: {e}"));
    let res = (|| -> Res<()> {
        let (tree, msg) = run.refused_checkpoint()?;
        if !msg.contains(&format!("pid {}", run.root)) || !msg.contains("memory-deny-write-execute") || !msg.contains("PR_SET_MDWE") {
            return Err(format!("the refusal does not name the process and PR_SET_MDWE: {msg:?}"));
        }
        sleep(SETTLE);
        run.check_running(&tree, "after the refused checkpoint")?;
        run.check_tree("after the refused checkpoint")?;
        run.expect_pass()
    })();
    if let Err(e) = res {
        panic!("{}", run.report(&e));
    }
}

/// A checkpoint of a process in a user namespace of its own fails naming
/// the process and the namespace; the program runs on and passes.
#[test]
fn user_namespace_is_refused() {
    let mut run = Run::new(&USERNS, "refused", None).unwrap_or_else(|e| panic!("zdtm userns: {e}"));
    let res = (|| -> Res<()> {
        let (tree, msg) = run.refused_checkpoint()?;
        let want = format!("pid {}: unsupported namespace: user namespace of its own", run.root);
        if !msg.contains(&want) {
            return Err(format!("the refusal does not name the process and the user namespace: {msg:?}"));
        }
        sleep(SETTLE);
        run.check_running(&tree, "after the refused checkpoint")?;
        run.check_tree("after the refused checkpoint")?;
        run.expect_pass()
    })();
    if let Err(e) = res {
        panic!("{}", run.report(&e));
    }
}

/// A checkpoint of a tree holding hugetlbfs memory lpm refuses fails
/// naming the process, the SysV SHM_HUGETLB segment and why; `lpm
/// inspect` names the private mapping of an MFD_HUGETLB memfd too; the
/// tree runs on and passes. The runner reserves its huge pages.
#[test]
fn hugetlb_kinds_are_refused() {
    let mut run = Run::new(&MEM_HUGETLB_REFUSED, "refused", None).unwrap_or_else(|e| panic!("zdtm mem_hugetlb_refused: {e}"));
    let res = (|| -> Res<()> {
        let (tree, msg) = run.refused_checkpoint()?;
        if !msg.contains(&format!("pid {}", run.root)) || !msg.contains("SysV shared memory segment") || !msg.contains("SHM_HUGETLB") {
            return Err(format!("the refusal does not name the process and the SHM_HUGETLB segment: {msg:?}"));
        }
        let out =
            Command::new(LPM).args(["inspect", "--pid", &run.root.to_string()]).output().map_err(|e| format!("run lpm inspect: {e}"))?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !text.contains("SHM_HUGETLB") || !text.contains("private mapping of a memfd on hugetlbfs") {
            return Err(format!("lpm inspect does not name both hugetlbfs kinds: {text:?}"));
        }
        sleep(SETTLE);
        run.check_running(&tree, "after the refused checkpoint")?;
        run.check_tree("after the refused checkpoint")?;
        run.expect_pass()
    })();
    if let Err(e) = res {
        panic!("{}", run.report(&e));
    }
}

/// Pages shared copy-on-write stay shared, each with the processes that
/// shared it, while the kernel migrates pages under the checkpoint: memory
/// is compacted over and over (from ready to the verdict) during three
/// checkpoint/restores of
/// mem_cow_wide (a parent and four children sharing 32 MiB). Read process
/// after process, a page moved in between looked like two groups no fork
/// order gives, and the checkpoint was refused (seen with PostgreSQL).
#[test]
fn cow_kept_while_pages_migrate() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    struct Stop(Arc<AtomicBool>);
    impl Drop for Stop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let passes = Arc::new(AtomicU64::new(0));
    // Compacting only from ready to the verdict: the program's own checks
    // read its processes' page frames one after another too, and a page
    // moved in between (or caught mid-move) would fail them.
    let compact = |_: &Run| {
        let stop = Stop(Arc::new(AtomicBool::new(false)));
        let (flag, passes) = (stop.0.clone(), passes.clone());
        let thread = std::thread::spawn(move || -> Result<(), String> {
            while !flag.load(Ordering::SeqCst) {
                fs::write("/proc/sys/vm/compact_memory", "1").map_err(|e| format!("compact memory (/proc/sys/vm/compact_memory): {e}"))?;
                passes.fetch_add(1, Ordering::SeqCst);
                // Passes paced as a busy kernel's are, not back to back:
                // with no pause a whole pass always runs during some read
                // of the tree's page tables, on a loaded machine for
                // longer than the dump waits (2 s), and the dump refuses
                // (as it must when frames never settle; CI met it once).
                std::thread::sleep(std::time::Duration::from_millis(250));
            }
            Ok(())
        });
        (stop, thread)
    };
    let stop_compacting = |(stop, thread): (Stop, std::thread::JoinHandle<Result<(), String>>)| {
        drop(stop);
        thread.join().expect("compactor thread").unwrap_or_else(|e| panic!("{e}"));
    };
    let prog = find_prog("mem_cow_wide");
    let mut run = Run::new(prog, "compacting", None).unwrap_or_else(|e| panic!("zdtm mem_cow_wide: {e}"));
    if let Err(e) = restore_3x_with(&mut run, compact, stop_compacting) {
        panic!("{}", run.report(&e));
    }
    assert!(passes.load(Ordering::SeqCst) > 0, "memory was never compacted during the checkpoints");
}

/// A checkpoint of a tree where one process traces another (a debugger
/// and its debuggee) fails naming the traced thread and its tracer, and
/// both run on as they were.
#[test]
fn traced_process_is_refused() {
    let mut run = Run::new(&TRACED, "refused", None).unwrap_or_else(|e| panic!("zdtm traced: {e}"));
    let res = (|| -> Res<()> {
        let (tree, msg) = run.refused_checkpoint()?;
        let want = format!(
            "unsupported tracer: thread {} is traced by pid {} (traced)",
            tree.keys().find(|&&p| p != run.root).copied().unwrap_or(0),
            run.root
        );
        if !msg.contains(&want) {
            return Err(format!("the refusal does not name the thread and its tracer ({want:?}): {msg:?}"));
        }
        run.check_tree("after the refused checkpoint")?;
        run.expect_pass()
    })();
    if let Err(e) = res {
        panic!("{}", run.report(&e));
    }
}

/// An unlinked file of 200 MiB with 104 MiB of data (ghost_big) is
/// streamed to the image and back: the peak memory of `lpm checkpoint`
/// and of `lpm restore` stays far below its data (the data was held
/// whole before, and refused past 64 MiB).
#[test]
fn ghost_big_memory_stays_flat() {
    const DATA_KIB: i64 = 104 * 1024;
    let prog = find_prog("ghost_big");
    let mut run = Run::new(prog, "memory", None).unwrap_or_else(|e| panic!("zdtm ghost_big: {e}"));
    let res = (|| -> Res<()> {
        run.start(None)?;
        run.wait_ready()?;
        let tree = run.check_tree("before checkpoint")?;
        let images = run.dir.join("images");
        run.checkpoint(&images, false)?;
        run.wait_gone(&tree, "after checkpoint")?;
        run.restore(&images)?;
        let peaks = run.lpm_peak_kib.clone();
        eprintln!("ghost_big: peak memory of lpm checkpoint, restore: {peaks:?} KiB ({DATA_KIB} KiB of data)");
        if let Some(p) = peaks.iter().find(|&&p| p > DATA_KIB / 3) {
            return Err(format!("an lpm call peaked at {p} KiB, more than a third of the file's {DATA_KIB} KiB of data: {peaks:?}"));
        }
        sleep(SETTLE);
        run.expect_pass()
    })();
    if let Err(e) = res {
        panic!("{}", run.report(&e));
    }
}

/// Checkpoints `prog`, restores it with the restore's `sabotage`, which
/// `--verify` must refuse with a message holding every one of `names`
/// (`did` says what the sabotaged restore did), then restores the same
/// image as it is and expects the program to pass.
fn verify_names_sabotage(prog: &'static Prog, label: &str, sabotage: &str, did: &str, names: &[&str]) {
    let mut run = Run::new(prog, label, None).unwrap_or_else(|e| panic!("zdtm {}: {e}", prog.name));
    let res = (|| -> Res<()> {
        run.start(None)?;
        run.wait_ready()?;
        let tree = run.check_tree("before checkpoint")?;
        let images = run.dir.join("images");
        run.checkpoint(&images, false)?;
        run.wait_gone(&tree, "after checkpoint")?;
        run.lpm_env = vec![(lpm_engine::SABOTAGE_ENV.to_string(), sabotage.to_string())];
        if run.restore(&images).is_ok() {
            return Err(format!("a restore that {did} passed --verify"));
        }
        run.lpm_env.clear();
        let (_, stderr) = run.lpm_calls.last().cloned().ok_or("no lpm call")?;
        let msg = fs::read_to_string(&stderr).unwrap_or_default();
        if let Some(missing) = names.iter().find(|n| !msg.contains(**n)) {
            return Err(format!("the refusal of a restore that {did} does not say {missing:?}: {msg:?}"));
        }
        run.wait_gone(&tree, "after the refused restore")?;
        run.restore(&images)?;
        sleep(SETTLE);
        run.expect_pass()
    })();
    if let Err(e) = res {
        panic!("{}", run.report(&e));
    }
}

/// `--verify` tells a restore that maps a copy of an unlinked file from
/// one that maps the inode its descriptor holds (ghost_map, with the
/// restore's `ghost-copy` sabotage): the restore fails naming the area
/// and the descriptor, and the same image then restores and passes.
#[test]
fn verify_names_a_mapping_of_another_unlinked_inode() {
    verify_names_sabotage(
        find_prog("ghost_map"),
        "verify",
        "ghost-copy",
        "maps a copy of an unlinked file",
        &["differs from its image", "inode (as fd 10: unlinked"],
    );
}

/// The inotify and fanotify programs run under `unshare` with mount,
/// pid, network, uts and ipc namespaces of their own, as in a partition.
static IN_OWN_MOUNT_NS: [Prog; 3] = [
    Prog { needs: &[Need::Unshare], term: Term::OnlyChild, ..prog("inotify", Launch::CUnshared, true, 4) },
    Prog { needs: &[Need::Unshare], term: Term::OnlyChild, ..prog("inotify_deleted", Launch::CUnshared, true, 2) },
    Prog { needs: &[Need::Root, Need::Unshare], term: Term::OnlyChild, ..prog("fanotify", Launch::CUnshared, true, 2) },
];

/// inotify watches (also on unlinked files) and fanotify marks (on
/// inodes, the mount and the filesystem of /dev) of a tree in a mount
/// namespace of its own: three checkpoints and restores, each verified,
/// with the watches and marks found again through the restored
/// namespace.
#[test]
fn notify_programs_restore_3x_in_a_mount_namespace_of_their_own() {
    for prog in &IN_OWN_MOUNT_NS {
        let mut run = Run::new(prog, "ownns", None).unwrap_or_else(|e| panic!("zdtm {}: {e}", prog.name));
        if let Err(e) = restore_3x(&mut run) {
            panic!("{}", run.report(&e));
        }
    }
}

/// A fanotify group in a mount namespace of the tree's own (as every
/// partition has) keeps its mount mark on the restored namespace's mount
/// at /dev: a restore that adds the marks through lpm's own namespace
/// instead (the restore's `fsnotify-ns` sabotage) fails `--verify`
/// naming the mark's object, and the same image then restores and passes.
#[test]
fn verify_names_a_fanotify_mark_on_a_mount_of_another_namespace() {
    verify_names_sabotage(
        &IN_OWN_MOUNT_NS[2],
        "verify-ns",
        "fsnotify-ns",
        "marks a mount of lpm's namespace",
        &["differs from its image", "fanotify marks' objects"],
    );
}

/// `--verify` tells a private MAP_HUGETLB area restored in 4 KiB pages
/// (mem_hugetlb, with the restore's `hugetlb-small` sabotage) from the
/// original: the restore fails naming the area, VmFlags ht and the page
/// size, and the same image then restores and passes.
#[test]
fn verify_names_a_hugetlb_area_in_small_pages() {
    verify_names_sabotage(
        find_prog("mem_hugetlb"),
        "verify",
        "hugetlb-small",
        "maps a hugetlbfs area in 4 KiB pages",
        &["hugetlbfs (VmFlags ht): recorded true, found false", "KernelPageSize: recorded 2097152, found 4096"],
    );
}

/// `--verify` tells a mask over a host path restored writable (mount_masks,
/// with the restore's `mask-rw` sabotage: a writable mount is no mask)
/// from the original: the restore fails naming the mount namespace's
/// masks, and the same image then restores and passes.
#[test]
fn verify_names_a_writable_mask() {
    verify_names_sabotage(find_prog("mount_masks"), "verify", "mask-rw", "mounts the masks writable", &["mount namespace masks: recorded"]);
}

/// A restore that needs more huge pages than the pool has free fails
/// before it makes anything, naming the page size, how many it needs and
/// what the pool holds; with pages enough the same image restores and
/// passes. The test has the pool to itself (`Exclusive`): what is free is
/// what the checkpoint left.
#[test]
fn restore_refuses_without_free_huge_pages() {
    // mem_hugetlb without the runner's reservation: the test makes the
    // pool itself.
    static BARE: Prog = prog("mem_hugetlb", Launch::C, true, 3);
    // What the program holds (its private area reserved whole, the
    // child's copy of a page, the shared object); a restore needs 8.
    let mut pool =
        common::hugepages::Exclusive::take(6, Duration::from_secs(900)).unwrap_or_else(|e| panic!("huge pages for zdtm mem_hugetlb: {e}"));
    let mut run = Run::new(&BARE, "nopages", None).unwrap_or_else(|e| panic!("zdtm mem_hugetlb: {e}"));
    let res = (|| -> Res<()> {
        run.start(None)?;
        run.wait_ready()?;
        let tree = run.check_tree("before checkpoint")?;
        let images = run.dir.join("images");
        run.checkpoint(&images, false)?;
        run.wait_gone(&tree, "after checkpoint")?;
        let (free, how) = lpm_engine::hugetlb::available(2 << 20);
        if free >= 8 {
            return Err(format!("{free} huge pages free after the checkpoint ({how}): a restore needing 8 would fit"));
        }
        if run.restore(&images).is_ok() {
            return Err(format!("a restore needing 8 huge pages passed with {free} free"));
        }
        let (_, stderr) = run.lpm_calls.last().cloned().ok_or("no lpm call")?;
        let msg = fs::read_to_string(&stderr).unwrap_or_default();
        if !msg.contains(&format!("not enough free huge pages: 8 huge pages of 2048 kB needed, {free} free")) {
            return Err(format!("the refusal does not name what is missing: {msg:?}"));
        }
        if tree.keys().any(|&p| exists(p)) {
            return Err("the refused restore left processes behind".into());
        }
        pool.grow(2)?;
        run.restore(&images)?;
        sleep(SETTLE);
        run.expect_pass()
    })();
    let report = res.err().map(|e| run.report(&e));
    drop(run);
    drop(pool);
    if let Some(r) = report {
        panic!("{r}");
    }
}

/// What a migration's validation counts of a running tree's huge pages
/// (`hugetlb::needed_live`) is what its restore checks from the image
/// (`hugetlb::needed`): every private area and every shared object whole,
/// and a memfd a descriptor holds besides the copy made for its mappings.
#[test]
fn huge_pages_counted_alike_running_and_in_the_image() {
    for (name, want) in [("mem_hugetlb", 8u64), ("mem_hugetlb_memfd", 7)] {
        let mut run = Run::new(find_prog(name), "count", None).unwrap_or_else(|e| panic!("zdtm {name}: {e}"));
        let res = (|| -> Res<()> {
            run.start(None)?;
            run.wait_ready()?;
            let live = lpm_engine::hugetlb::needed_live(run.root).map_err(|e| format!("count the running tree's huge pages: {e}"))?;
            let images = run.dir.join("images");
            run.checkpoint(&images, true)?;
            let tree = lpm_image::read_tree(&images).map_err(|e| format!("read the image: {e}"))?;
            let image = lpm_engine::hugetlb::needed(&tree);
            let expected = BTreeMap::from([(2u64 << 20, want)]);
            if live != expected || image != expected {
                return Err(format!("huge pages counted: running {live:?}, image {image:?}, expected {expected:?}"));
            }
            sleep(SETTLE);
            run.expect_pass()
        })();
        if let Err(e) = res {
            panic!("{}", run.report(&e));
        }
    }
}

/// Runs many programs at once (at most `batch` at a time), each through
/// start, ready, SIGTERM; check judges each verdict. Panics with every
/// failure's report.
fn run_all(label: &str, jobs: Vec<(&'static Prog, Option<u32>)>, batch: usize, check: fn(&Prog, Option<u32>, &str) -> Res<()>) {
    let build_dir = unique_dir(&format!("{label}-build")).unwrap_or_else(|e| panic!("{e}"));
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(build_dir.clone());
    let mut bins: BTreeMap<&str, Res<PathBuf>> = BTreeMap::new();
    let mut failures = Vec::new();
    for chunk in jobs.chunks(batch) {
        let mut runs: Vec<(Res<Run>, Option<u32>)> = Vec::new();
        for &(prog, sabotage) in chunk {
            let setup = (|| {
                check_needs(prog)?;
                let bin = if matches!(prog.launch, Launch::C | Launch::CUnshared | Launch::CIpc | Launch::CNet) {
                    let b = bins.entry(prog.name).or_insert_with(|| build(prog, &build_dir)).clone()?;
                    Some(b)
                } else {
                    None
                };
                let tag = sabotage.map_or(label.to_string(), |n| format!("{label}{n}"));
                let mut run = Run::with_pages(prog, &tag, bin.as_deref(), true)?;
                run.start(sabotage).map_err(|e| run.report(&e))?;
                Ok(run)
            })();
            runs.push((setup, sabotage));
        }
        for (run, _) in runs.iter_mut() {
            if let Ok(r) = run {
                if let Err(e) = r.wait_ready() {
                    *run = Err(r.report(&e));
                }
            }
        }
        for (run, sabotage) in runs.iter_mut() {
            match run {
                Ok(r) => {
                    let verdict = r.verdict().and_then(|v| check(r.prog, *sabotage, &v));
                    if let Err(e) = verdict {
                        failures.push(r.report(&e));
                    } else {
                        eprintln!("zdtm {}: ok ({})", r.label, tail(&r.result_path(), 200).trim());
                    }
                }
                Err(e) => failures.push(e.clone()),
            }
        }
    }
    if !failures.is_empty() {
        panic!("{} of {} runs failed:\n\n{}", failures.len(), jobs.len(), failures.join("\n\n"));
    }
}

/// Every program passes its own verification when nothing is done to it.
#[test]
fn programs_verify_without_checkpoint() {
    become_subreaper();
    let jobs = PROGS.iter().map(|p| (p, None)).collect();
    run_all("verify", jobs, PROGS.len(), |_, _, v| match v {
        "PASS\n" => Ok(()),
        _ => Err(format!("reported {}", v.trim())),
    });
}

/// Every program notices each kind of breakage it claims to detect: with
/// ZDTM_SABOTAGE=N it breaks its state on SIGTERM and must report FAIL.
#[test]
fn programs_detect_sabotage() {
    become_subreaper();
    let jobs = PROGS.iter().flat_map(|p| (1..=p.sabotage).map(move |n| (p, Some(n)))).collect();
    run_all("sabotage", jobs, 8, |p, n, v| {
        if v.starts_with("FAIL: ") {
            Ok(())
        } else {
            Err(format!("{} with ZDTM_SABOTAGE={} reported {:?}, expected FAIL", p.name, n.unwrap_or(0), v.trim()))
        }
    });
}
