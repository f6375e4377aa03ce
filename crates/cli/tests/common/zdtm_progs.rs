//! The zdtm programs (`tests/zdtm/`): how each is built and started, what
//! it needs, where SIGTERM goes. Shared by the checkpoint/restore runner
//! (`zdtm.rs`) and the migration runner (`migrate_programs.rs`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Something a program needs from the machine.
#[derive(Clone, Copy, Debug)]
pub enum Need {
    /// euid 0 (setresuid from root, creating namespaces).
    Root,
    /// The CPU has AVX2 and the kernel enabled it.
    Avx2,
    /// `unshare` from util-linux.
    Unshare,
    /// Huge pages of 2 MiB free while it runs (the machine has none):
    /// the runners reserve them ([`reserve_needs`]) and give them back
    /// however the run ends. `alone`: the program by itself, its
    /// sabotages included; `moved`: besides it or its image, a restored
    /// copy and a copy being moved at once.
    HugePages {
        /// The program alone.
        alone: u64,
        /// With its copies.
        moved: u64,
    },
}

/// How a program is built and started.
#[derive(Clone, Copy, Debug)]
pub enum Launch {
    /// `<name>.c` compiled with gcc, run directly.
    C,
    /// `<name>.c` compiled with gcc, run under
    /// `unshare --fork --pid --mount-proc --net --uts --ipc`.
    CUnshared,
    /// `<name>.c` compiled with gcc, run under `unshare --ipc` (it execs
    /// the program, which is the root and owns the ipc namespace).
    CIpc,
    /// `<name>.c` compiled with gcc, run under `unshare --net` (it execs
    /// the program, which is the root and owns the network namespace).
    CNet,
    /// `python3 <name>.py`.
    Python,
    /// `sh <name>.sh`.
    Shell,
}

/// Where SIGTERM goes to ask for the verdict.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Term {
    /// The root of the tree.
    Root,
    /// The root's only child (unshare blocks SIGTERM; its child is pid 1).
    OnlyChild,
}

/// One zdtm program: how it is built and started, what it needs, where
/// its SIGTERM goes and what the checkpoint runner may compare.
pub struct Prog {
    /// File name without the extension, in `tests/zdtm/`.
    pub name: &'static str,
    /// How it is built and started.
    pub launch: Launch,
    /// What it needs from the machine.
    pub needs: &'static [Need],
    /// Who gets SIGTERM.
    pub term: Term,
    /// Memory layout and fd offsets do not change while the program waits,
    /// so maps and fd positions are compared too.
    pub stable: bool,
    /// Number of ZDTM_SABOTAGE cases the program implements.
    pub sabotage: u32,
    /// It does a round of new work on SIGUSR1 and reports it in the file
    /// `round` of its work dir (see [`ROUND_FILE`]): the runners ask for
    /// one after every restore and every migration.
    pub rounds: bool,
}

/// Where a program with [`Prog::rounds`] reports a round of new work,
/// in its work dir: "ok" or "FAIL: why". The runner removes it, sends
/// SIGUSR1 and waits for it.
pub const ROUND_FILE: &str = "round";

/// How long a round of new work may take (its pool waits up to 10 s).
pub const ROUND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// A program with no needs whose root gets SIGTERM.
pub const fn prog(name: &'static str, launch: Launch, stable: bool, sabotage: u32) -> Prog {
    Prog { name, launch, needs: &[], term: Term::Root, stable, sabotage, rounds: false }
}

/// The replayed programs.
pub static PROGS: &[Prog] = &[
    prog("mem_anon", Launch::C, true, 6),
    prog("mem_shared", Launch::C, true, 5),
    Prog { needs: &[Need::Avx2], ..prog("regs_fpu", Launch::C, true, 8) },
    prog("threads", Launch::C, true, 5),
    prog("signals", Launch::C, true, 6),
    prog("files", Launch::C, true, 6),
    prog("pipes", Launch::C, true, 5),
    prog("tree", Launch::C, true, 2),
    prog("process_state", Launch::C, true, 7),
    Prog { needs: &[Need::Root], ..prog("creds", Launch::C, true, 4) },
    prog("py_counter", Launch::Python, false, 5),
    prog("py_threads", Launch::Python, false, 3),
    prog("pipeline", Launch::Shell, false, 1),
    Prog { needs: &[Need::Root, Need::Unshare], term: Term::OnlyChild, ..prog("ns_tree", Launch::CUnshared, true, 2) },
    prog("posix_timers", Launch::C, true, 5),
    prog("itimers", Launch::C, true, 4),
    Prog { needs: &[Need::Root, Need::Unshare], ..prog("sysv_ipc", Launch::CIpc, true, 5) },
    Prog { needs: &[Need::Root, Need::Unshare], ..prog("posix_mq", Launch::CIpc, true, 5) },
    prog("posix_shm", Launch::C, true, 3),
    prog("file_locks", Launch::C, true, 4),
    prog("sock_unix", Launch::C, true, 5),
    prog("sock_tcp", Launch::C, true, 5),
    prog("sock_tcp_closing", Launch::C, true, 4),
    prog("sock_tcp6", Launch::C, true, 3),
    Prog { needs: &[Need::Root, Need::Unshare], ..prog("sock_netns", Launch::CNet, true, 2) },
    prog("sock_netlink", Launch::C, true, 2),
    prog("eventfd", Launch::C, true, 4),
    prog("timerfd", Launch::C, true, 5),
    prog("signalfd", Launch::C, true, 4),
    prog("epoll", Launch::C, true, 5),
    prog("inotify", Launch::C, true, 4),
    prog("memfd", Launch::C, true, 5),
    prog("pidfd", Launch::C, true, 3),
    prog("zombie", Launch::C, true, 3),
    prog("seccomp", Launch::C, true, 3),
    prog("pty", Launch::C, true, 4),
    prog("pty_session", Launch::C, true, 2),
    prog("pty_pending", Launch::C, true, 2),
    prog("stopped", Launch::C, true, 2),
    prog("sock_unix_closed", Launch::C, true, 1),
    prog("dev_tty", Launch::C, true, 1),
    Prog { rounds: true, ..prog("new_work", Launch::C, true, 5) },
    Prog { needs: &[Need::Root], ..prog("ghost_attrs", Launch::C, true, 6) },
    prog("ghost_fork", Launch::C, true, 3),
    prog("ghost_links", Launch::C, true, 3),
    prog("ghost_big", Launch::C, true, 3),
    Prog { needs: &[Need::Root], ..prog("ghost_dir", Launch::C, true, 3) },
    prog("ghost_map", Launch::C, true, 3),
    prog("opath", Launch::C, true, 3),
    prog("memfd_reopen", Launch::C, true, 3),
    Prog { needs: &[Need::Root], ..prog("ghost_nodes", Launch::C, true, 3) },
    Prog { needs: &[Need::Root], ..prog("ghost_relinked", Launch::C, true, 3) },
    prog("cwd_proc", Launch::C, true, 2),
    Prog { needs: &[Need::Root], ..prog("fown", Launch::C, true, 5) },
    prog("fd_table", Launch::C, true, 2),
    prog("pipe_reopen", Launch::C, true, 4),
    prog("pipe_full", Launch::C, true, 3),
    prog("sock_unlinked", Launch::C, true, 3),
    prog("sock_filter", Launch::C, true, 3),
    prog("sock_shutdown", Launch::C, true, 3),
    prog("mem_cow", Launch::C, true, 4),
    prog("mem_cow_wide", Launch::C, true, 2),
    prog("mem_madvise", Launch::C, true, 7),
    prog("mem_fileprot", Launch::C, true, 3),
    prog("mem_shmem_private", Launch::C, true, 4),
    Prog { needs: &[Need::Root], ..prog("sched_policy", Launch::C, true, 3) },
    Prog { needs: &[Need::Root], ..prog("sched_rt", Launch::C, true, 4) },
    prog("oom_score", Launch::C, true, 2),
    prog("membarrier", Launch::C, true, 2),
    prog("zombie_pgrp", Launch::C, true, 2),
    Prog { needs: &[Need::Root], ..prog("pty_owner", Launch::C, true, 3) },
    prog("pidfd_dead", Launch::C, true, 3),
    prog("zombie_core", Launch::C, true, 2),
    prog("vdso_unmapped", Launch::C, true, 2),
    Prog { needs: &[Need::Root, Need::Unshare], ..prog("ns_fds", Launch::CNet, true, 2) },
    prog("inotify_deleted", Launch::C, true, 2),
    Prog { needs: &[Need::Root], ..prog("fanotify", Launch::C, true, 2) },
    Prog { needs: &[Need::Root, Need::Unshare], term: Term::OnlyChild, ..prog("ns_fds_tree", Launch::CUnshared, true, 2) },
    prog("sock_scm", Launch::C, true, 4),
    prog("sock_dgram_bound", Launch::C, true, 3),
    prog("sock_relative", Launch::C, true, 2),
    prog("sock_accept_queue", Launch::C, true, 2),
    Prog { needs: &[Need::Root, Need::Unshare], ..prog("sock_ping", Launch::CNet, true, 4) },
    Prog { needs: &[Need::Root, Need::Unshare], ..prog("sock_udplite", Launch::CNet, true, 3) },
    Prog { needs: &[Need::Root, Need::Unshare], ..prog("sock_freebind", Launch::CNet, true, 2) },
    Prog { needs: &[Need::Root, Need::Unshare], ..prog("sock_netlink_peer", Launch::CNet, true, 2) },
    Prog { needs: &[Need::Root, Need::Unshare], ..prog("sock_packet", Launch::CNet, true, 3) },
    Prog { needs: &[Need::Root, Need::Unshare], ..prog("sock_raw", Launch::CNet, true, 3) },
    Prog { needs: &[Need::Root], ..prog("sock_reuseport", Launch::C, true, 4) },
    // 6 huge pages for the program, 8 for a restored copy (the child's
    // private area reserved whole): twice 8 while a copy moves back.
    // Alone 6, and 2 more for sabotage 3's new shared area.
    Prog { needs: &[Need::HugePages { alone: 8, moved: 16 }], ..prog("mem_hugetlb", Launch::C, true, 3) },
    // 4 huge pages for the program, 7 for a restored copy (each memfd's
    // copy made for mappings besides the memfd itself), twice 7 while a
    // copy moves back; alone 4, and 3 more for sabotage 3's new memfd.
    Prog { needs: &[Need::HugePages { alone: 7, moved: 14 }], ..prog("mem_hugetlb_memfd", Launch::C, true, 3) },
    Prog { needs: &[Need::Root], ..prog("mount_masks", Launch::C, true, 3) },
];

/// Holds a unix socket connected to a listener of the harness: outside the
/// tree, so a checkpoint must refuse it (not in PROGS: it needs that
/// listener to start).
pub static SOCK_OUTSIDE: Prog = prog("sock_outside", Launch::C, true, 1);

/// Holds a message in a unix socket with SO_PASSCRED: a checkpoint must
/// refuse it by name (not in PROGS: no restore can send the message again
/// with its sender's credentials).
pub static SOCK_PASSCRED: Prog = prog("sock_passcred", Launch::C, true, 1);

/// Holds its child in a ptrace stop, as a debugger would: a checkpoint
/// must refuse the traced child by name (not in PROGS: no restore can
/// attach the tracer again).
pub static TRACED: Prog = prog("traced", Launch::C, true, 1);

/// Lives in a user namespace of its own: a checkpoint must refuse it by
/// name (not in PROGS: user namespaces are not recreated yet).
pub static USERNS: Prog = Prog { needs: &[Need::Root], ..prog("userns", Launch::C, true, 1) };

/// Holds a descriptor of the host's network namespace: a checkpoint must
/// refuse it by name (not in PROGS: no restore may carry it).
pub static NS_HOST: Prog = prog("ns_host", Launch::C, true, 1);

/// Runs under memory-deny-write-execute (PR_SET_MDWE): a checkpoint must
/// refuse it by name (not in PROGS: the restore does not set it again).
pub static MDWE_REFUSED: Prog = prog("mdwe_refused", Launch::C, true, 1);

/// Holds the hugetlbfs memory lpm refuses (a SysV SHM_HUGETLB segment, a
/// private mapping of an MFD_HUGETLB memfd): a checkpoint must refuse it
/// by name (not in PROGS: no restore makes it again).
pub static MEM_HUGETLB_REFUSED: Prog =
    Prog { needs: &[Need::HugePages { alone: 2, moved: 2 }], ..prog("mem_hugetlb_refused", Launch::C, true, 1) };

/// The program named `name` in [`PROGS`].
pub fn find_prog(name: &str) -> &'static Prog {
    PROGS.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no zdtm program {name}"))
}

/// `tests/zdtm/`, where the sources and scripts are.
pub fn src_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/zdtm");
    dir.canonicalize().unwrap_or(dir)
}

/// Fails naming the first thing `prog` needs that this machine lacks.
pub fn check_needs(prog: &Prog) -> Result<(), String> {
    let need = |what: &str| Err(format!("zdtm {} needs {what}", prog.name));
    for n in prog.needs {
        match n {
            // SAFETY: geteuid has no preconditions.
            Need::Root if unsafe { libc::geteuid() } != 0 => return need("root (euid 0): it sets credentials or creates namespaces"),
            Need::Avx2 if !std::arch::is_x86_feature_detected!("avx2") => return need("AVX2, which this CPU or kernel does not offer"),
            Need::Unshare if !tool_works("unshare", &["--version"]) => return need("`unshare` from util-linux in PATH"),
            _ => {}
        }
    }
    match prog.launch {
        Launch::C | Launch::CUnshared | Launch::CIpc | Launch::CNet if !tool_works("gcc", &["--version"]) => need("gcc in PATH"),
        Launch::Python | Launch::Shell if !tool_works("python3", &["--version"]) => need("python3 in PATH"),
        _ => Ok(()),
    }
}

/// Reserves the huge pages `prog` needs ([`Need::HugePages`]: by itself
/// when `alone`, else with its copies), held until the guard drops;
/// fails saying why they could not be had.
pub fn reserve_needs(prog: &Prog, alone: bool) -> Result<Option<super::hugepages::HugePages>, String> {
    for n in prog.needs {
        if let Need::HugePages { alone: a, moved } = n {
            let n = if alone { *a } else { *moved };
            return super::hugepages::HugePages::reserve(n).map(Some).map_err(|e| format!("zdtm {} needs {n} huge pages: {e}", prog.name));
        }
    }
    Ok(None)
}

/// True if `tool args` runs and succeeds.
pub fn tool_works(tool: &str, args: &[&str]) -> bool {
    Command::new(tool).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Compiles a C program into dir; returns the binary.
pub fn build(prog: &Prog, dir: &Path) -> Result<PathBuf, String> {
    let src = src_dir().join(format!("{}.c", prog.name));
    let bin = dir.join(prog.name);
    let out = Command::new("gcc")
        .args(["-O1", "-pthread", "-Wall", "-o"])
        .arg(&bin)
        .arg(&src)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run gcc: {e}"))?;
    if !out.status.success() {
        return Err(format!("gcc {} failed: {}\n{}", src.display(), out.status, String::from_utf8_lossy(&out.stderr)));
    }
    Ok(bin)
}

impl Launch {
    /// The program is C, built by [`build`].
    pub fn is_c(self) -> bool {
        matches!(self, Launch::C | Launch::CUnshared | Launch::CIpc | Launch::CNet)
    }
}

/// The argv that starts `prog` the way the runner does (under `unshare` for
/// the programs that own namespaces); `bin` is the built binary of a C
/// program.
pub fn argv(prog: &Prog, bin: Option<&Path>) -> Result<Vec<String>, String> {
    let bin = || bin.map(|b| b.to_string_lossy().into_owned()).ok_or_else(|| format!("zdtm {}: no binary", prog.name));
    let script = |ext: &str| src_dir().join(format!("{}.{ext}", prog.name)).to_string_lossy().into_owned();
    let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    Ok(match prog.launch {
        Launch::C => vec![bin()?],
        Launch::CUnshared => [words(&["unshare", "--fork", "--pid", "--mount-proc", "--net", "--uts", "--ipc"]), vec![bin()?]].concat(),
        Launch::CIpc => [words(&["unshare", "--ipc"]), vec![bin()?]].concat(),
        Launch::CNet => [words(&["unshare", "--net"]), vec![bin()?]].concat(),
        Launch::Python => vec!["python3".into(), script("py")],
        Launch::Shell => vec!["sh".into(), script("sh")],
    })
}

/// Asks the program whose root is `pid` and whose work dir is `work` for a
/// round of new work ([`Prog::rounds`]) and waits for its report: Ok when
/// the round passed, else why not. `alive` says whether the program still
/// runs (a crash ends the wait at once).
pub fn new_work_round(pid: i32, work: &Path, alive: impl Fn() -> bool) -> Result<(), String> {
    let file = work.join(ROUND_FILE);
    match std::fs::remove_file(&file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("remove {}: {e}", file.display())),
    }
    // SAFETY: kill takes plain integers.
    if unsafe { libc::kill(pid, libc::SIGUSR1) } != 0 {
        return Err(format!("SIGUSR1 {pid}: {}", std::io::Error::last_os_error()));
    }
    let t = std::time::Instant::now();
    loop {
        if let Ok(r) = std::fs::read_to_string(&file) {
            return match r.as_str() {
                "ok\n" => Ok(()),
                other => Err(format!("a round of new work reported {:?}", other.trim())),
            };
        }
        if !alive() {
            return Err(format!("the program (pid {pid}) died during a round of new work"));
        }
        if t.elapsed() > ROUND_TIMEOUT {
            return Err(format!("no report of a round of new work within {ROUND_TIMEOUT:?} of SIGUSR1 to {pid}"));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
