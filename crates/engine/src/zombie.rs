//! Zombies: processes of the tree that exited and were not yet waited for.
//!
//! A zombie cannot be seized; what is left of it (ids, credentials, signal
//! dispositions and mask, limits, personality, name and the wait status
//! its parent will collect) is read from /proc. On restore it is created
//! like any puppet (same pid, parent, session and group), given that state,
//! and made to exit with the recorded status once every other process is
//! shaped (`exit_all`, the stage before `finish`).
//!
//! SIGCHLD: the original's SIGCHLD was sent when it exited, and was either
//! handled already or is among the parent's pending signals, which the
//! engine restores. The restored exit sends another one: it is taken off
//! the parent again (rt_sigtimedwait in the stopped parent, whose signals
//! are all blocked) unless the parent's image already has SIGCHLD pending,
//! in which case the new one merged into it (standard signals do not
//! queue twice). The parent therefore sees exactly the SIGCHLD state it had.
//! A parent that ignores SIGCHLD (SIG_IGN or SA_NOCLDWAIT) would have the
//! new zombie reaped at once by the kernel; its SIGCHLD action is set to
//! the default for the exit and put back right after.

use lpm_image::{Creds, Process, ProcessPrctl, Rlimit, SigAction, Thread, Zombie};
use lpm_sys::ptrace::{self, Stop};
use lpm_sys::remote::Remote;

use crate::proc::{self, Stat, Status};
use crate::task::{put, put_path, Scratch};
use crate::{EngineError, Result, StepExt};

/// Signals whose default action dumps core: a puppet made to die of one
/// makes itself undumpable first, unless the zombie's wait status says it
/// dumped core (see [`CoreDir`]).
const CORE_SIGNALS: [i32; 10] = [
    libc::SIGQUIT,
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGSEGV,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGSYS,
];

/// An arbitrary handler address for a signal the zombie caught: a zombie
/// never runs a handler again, only the "caught" disposition is visible.
const CAUGHT: u64 = 0x1000;

fn unsupported(pid: i32, what: impl Into<String>) -> EngineError {
    EngineError::Unsupported { pid, kind: "zombie", what: what.into() }
}

/// Whether `pid` is a zombie the engine can record: Ok(false) for a live
/// process, an error naming what cannot be recorded.
pub fn check(pid: i32, root: i32) -> Result<bool> {
    let st = Stat::read(pid)?;
    if st.state() != 'Z' {
        return Ok(false);
    }
    if pid == root {
        return Err(unsupported(pid, "the root of the tree has exited"));
    }
    if proc::threads(pid)?.len() != 1 {
        return Err(unsupported(pid, "thread-group leader exited while other threads run"));
    }
    let status = st.num(52) as i32;
    let sig = status & 0x7f;
    if status & 0x80 != 0 && !CORE_SIGNALS.contains(&sig) {
        return Err(unsupported(pid, format!("wait status {status:#x} says a core was dumped for signal {sig}, which dumps none")));
    }
    if Status::read(pid)?.get("Seccomp") != "0" {
        return Err(unsupported(pid, "has seccomp filters"));
    }
    Ok(true)
}

/// Records a zombie (checked by [`check`]) from /proc.
pub fn dump(pid: i32, tree: &[i32]) -> Result<Process> {
    let st = Status::read(pid)?;
    let stat = Stat::read(pid)?;
    let ppid = stat.num(4) as i32;
    if !tree.contains(&ppid) {
        return Err(unsupported(pid, format!("its parent {ppid} is outside the tree")));
    }
    let mut sigactions = Vec::new();
    let (ign, cgt) = (st.hex("SigIgn"), st.hex("SigCgt"));
    for sig in 1..=64u32 {
        let bit = 1u64 << (sig - 1);
        let handler = if ign & bit != 0 {
            1
        } else if cgt & bit != 0 {
            CAUGHT
        } else {
            continue;
        };
        sigactions.push(SigAction { signo: sig, handler, ..Default::default() });
    }
    let caps = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"].iter().map(|k| st.hex(k)).collect();
    let nspid = st.nums("NSpid");
    Ok(Process {
        pid: pid as u32,
        ppid: ppid as u32,
        pgid: stat.num(5) as u32,
        sid: stat.num(6) as u32,
        host_pid: pid as u32,
        ctty: crate::files::tty::ctty(pid, tree)?,
        nspid: nspid.clone(),
        nspgid: st.nums("NSpgid"),
        start_time: stat.num(22),
        threads: vec![Thread {
            tid: pid as u32,
            comm: stat.comm.clone(),
            sigmask: st.hex("SigBlk"),
            host_tid: pid as u32,
            nstid: nspid,
            ..Default::default()
        }],
        sigactions,
        // Securebits are not visible from outside: they come back as 0.
        creds: Some(Creds { uids: st.nums("Uid"), gids: st.nums("Gid"), groups: st.nums("Groups"), caps, securebits: 0 }),
        prctl: Some(ProcessPrctl { no_new_privs: st.get("NoNewPrivs") == "1", dumpable: 1, ..Default::default() }),
        rlimits: proc::parse_limits(&proc::read(pid, "limits")?)
            .into_iter()
            .map(|(resource, soft, hard)| Rlimit { resource, soft, hard })
            .collect(),
        personality: u32::from_str_radix(proc::read(pid, "personality")?.trim(), 16).unwrap_or(0),
        zombie: Some(Zombie { exit_status: stat.num(52) as u32 }),
        oom_score_adj: crate::task::read_oom_score_adj(pid)?,
        ..Default::default()
    })
}

/// Whether a zombie's wait status says it dumped core.
fn dumped_core(p: &Process) -> bool {
    p.zombie.as_ref().is_some_and(|z| z.exit_status & 0x80 != 0)
}

/// Where the puppets of zombies that dumped core (and the helpers of
/// pidfds of reaped processes that did) write their cores, which are
/// removed as soon as each is written.
///
/// The kernel sets the core flag (0x80) of a wait status only when it wrote
/// a core, so a puppet must write one too. It does so into this private
/// directory, its working directory (fchdir to a descriptor every puppet
/// inherits, whichever mount namespace it is in), with a core filter of 0
/// (a few pages of notes); the helper standing for a reaped process whose
/// pidfd the tree holds does the same through the directory's name
/// ([`end_helper`]). That holds only where core_pattern names a file
/// in the working directory: a pipe to a helper (systemd-coredump, apport)
/// or a socket would hand a crash of the puppet to the host, and a path
/// would write outside the directory, so such a host is refused before the
/// restore begins.
pub struct CoreDir {
    path: std::path::PathBuf,
    fd: std::os::fd::OwnedFd,
}

impl CoreDir {
    /// A directory for the cores of the image's zombies that dumped one,
    /// or None when none did; refuses a host whose core_pattern would
    /// send a core elsewhere.
    pub fn for_tree(tree: &lpm_image::TreeImage) -> Result<Option<CoreDir>> {
        let zombie = tree
            .processes
            .iter()
            .find(|p| dumped_core(p))
            .map(|z| format!("zombie {} dumped core (wait status {:#x})", z.pid, z.zombie.as_ref().map_or(0, |z| z.exit_status)));
        let pidfd = || {
            tree.files.iter().find_map(|f| {
                let status = f.pidfd.as_ref()?.reaped_status.filter(|s| s & 0x80 != 0)?;
                Some(format!("the process of pidfd file {} dumped core (wait status {status:#x})", f.id))
            })
        };
        let Some(who) = zombie.or_else(pidfd) else { return Ok(None) };
        let pattern =
            std::fs::read_to_string("/proc/sys/kernel/core_pattern").map_err(crate::io_err("read /proc/sys/kernel/core_pattern"))?;
        let pattern = pattern.trim_end_matches('\n');
        if pattern.is_empty() || pattern.starts_with('|') || pattern.starts_with('@') || pattern.contains('/') {
            return Err(EngineError::Incompatible(format!(
                "{who}; a restore must make a process dump one too, and this host's core_pattern {pattern:?} does not write cores into the working directory"
            )));
        }
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let path = std::env::temp_dir().join(format!("lpm-cores-{}-{now}", std::process::id()));
        std::fs::create_dir(&path).map_err(crate::io_err(format!("create {}", path.display())))?;
        let made = (|| -> Result<std::os::fd::OwnedFd> {
            use std::os::unix::fs::PermissionsExt;
            // The puppet writes as the zombie's user.
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
                .map_err(crate::io_err(format!("chmod {}", path.display())))?;
            let dir = std::fs::File::open(&path).map_err(crate::io_err(format!("open {}", path.display())))?;
            Ok(dir.into())
        })();
        match made {
            Ok(fd) => Ok(Some(CoreDir { path, fd })),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&path);
                Err(e)
            }
        }
    }

    /// The descriptor puppets inherit.
    pub fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.fd.as_raw_fd()
    }

    /// Removes the cores written so far.
    pub(crate) fn clear(&self) -> Result<()> {
        for e in std::fs::read_dir(&self.path).map_err(crate::io_err(format!("list {}", self.path.display())))? {
            let e = e.map_err(crate::io_err(format!("list {}", self.path.display())))?;
            std::fs::remove_file(e.path()).map_err(crate::io_err(format!("remove core {}", e.path().display())))?;
        }
        Ok(())
    }
}

impl Drop for CoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Shapes a zombie's puppet: no descriptors (they were all closed when it
/// exited), its signal dispositions, limits, personality and name.
/// Credentials follow in the creds stage like everyone's. A zombie that
/// dumped core works in `core` (the descriptor of a [`CoreDir`]) from now.
pub fn shape(pid: i32, r: &mut Remote, s: Scratch, p: &Process, core: Option<i32>) -> Result<()> {
    const SYS_CLOSE_RANGE: i64 = 436;
    if dumped_core(p) {
        let fd = core.ok_or_else(|| EngineError::Incompatible(format!("zombie {} dumped core and no core directory is open", p.pid)))?;
        r.call(libc::SYS_fchdir, &[fd as u64]).step(pid, || "remote fchdir to the core directory (zombie)".into())?;
    }
    r.call(SYS_CLOSE_RANGE, &[0, u32::MAX as u64, 0]).step(pid, || "remote close_range (zombie)".into())?;
    for sig in (1..=64u32).filter(|&s| s != libc::SIGKILL as u32 && s != libc::SIGSTOP as u32) {
        let a = p.sigactions.iter().find(|a| a.signo == sig).cloned().unwrap_or_default();
        set_action(pid, r, s, sig, &a)?;
    }
    for l in &p.rlimits {
        let mut b = l.soft.to_le_bytes().to_vec();
        b.extend_from_slice(&l.hard.to_le_bytes());
        let addr = put(pid, s, 0, &b)?;
        r.call(libc::SYS_prlimit64, &[0, l.resource as u64, addr, 0])
            .step(pid, || format!("remote prlimit(resource {}) in zombie", l.resource))?;
    }
    r.call(libc::SYS_personality, &[p.personality as u64]).step(pid, || "remote personality in zombie".into())?;
    crate::task::restore_oom_score_adj(pid, p.oom_score_adj)?;
    if let Some(t) = p.threads.first() {
        let addr = put_path(pid, s, 0, &t.comm)?;
        r.call(libc::SYS_prctl, &[libc::PR_SET_NAME as u64, addr]).step(pid, || "remote PR_SET_NAME in zombie".into())?;
    }
    Ok(())
}

fn set_action(pid: i32, r: &mut Remote, s: Scratch, sig: u32, a: &SigAction) -> Result<()> {
    let mut b = Vec::with_capacity(32);
    for w in [a.handler, a.flags, a.restorer, a.mask] {
        b.extend_from_slice(&w.to_le_bytes());
    }
    let addr = put(pid, s, 0, &b)?;
    r.call(libc::SYS_rt_sigaction, &[sig as u64, addr, 0, 8]).step(pid, || format!("remote rt_sigaction({sig})"))?;
    Ok(())
}

/// A puppet, as the exit stage needs it.
pub struct Exiting<'a> {
    /// The zombie's image.
    pub p: &'a Process,
    /// Its puppet (host pid) and that puppet's base registers.
    pub host: i32,
    /// Base registers of the zombie's puppet.
    pub base: ptrace::Regs,
    /// The parent's image.
    pub parent: &'a Process,
    /// A remote in the parent's leader.
    pub parent_remote: Remote,
    /// Address of the trampoline's `syscall` instruction.
    pub syscall_ip: u64,
    /// A remote in the puppet.
    pub remote: Remote,
    /// Where it writes its core, if it dumped one.
    pub core: Option<&'a CoreDir>,
}

/// Makes a zombie's puppet exit with the recorded status, leaving the
/// parent's SIGCHLD state as it was in the image (module doc).
pub fn exit(z: Exiting, s: Scratch) -> Result<()> {
    let Exiting { p, host, base, parent, mut parent_remote, syscall_ip, mut remote, core } = z;
    let status = p.zombie.as_ref().map(|z| z.exit_status as i32).unwrap_or(0);
    if CORE_SIGNALS.contains(&(status & 0x7f)) {
        // The creds stage reset the flag; the kernel writes a core (and
        // sets 0x80) only for a dumpable process.
        let dumpable = u64::from(dumped_core(p));
        remote.call(libc::SYS_prctl, &[libc::PR_SET_DUMPABLE as u64, dumpable, 0, 0, 0]).step(host, || "remote PR_SET_DUMPABLE".into())?;
        if dumped_core(p) {
            let path = format!("/proc/{host}/coredump_filter");
            std::fs::write(&path, "0").map_err(crate::io_err(format!("write {path}")))?;
        }
    }
    let chld = libc::SIGCHLD as u32;
    let act = parent.sigactions.iter().find(|a| a.signo == chld).cloned().unwrap_or_default();
    let ignores = act.handler == 1 || act.flags & libc::SA_NOCLDWAIT as u64 != 0;
    let ppid = parent_remote.tid();
    if ignores {
        set_action(ppid, &mut parent_remote, s, chld, &SigAction { signo: chld, ..Default::default() })?;
    }
    let died = die(host, base, status, syscall_ip, p.threads.first().map(|t| t.sigmask).unwrap_or(0));
    if let Some(c) = core.filter(|_| dumped_core(p)) {
        c.clear()?;
    }
    died?;
    if ignores {
        set_action(ppid, &mut parent_remote, s, chld, &act)?;
    }
    let signo = |si: &Vec<u8>| si.get(..4).map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
    if !parent.shared_pending.iter().any(|si| signo(si) == Some(chld)) {
        // sigset with SIGCHLD, then a zero timeout.
        let set = put(ppid, s, 0, &(1u64 << (chld - 1)).to_le_bytes())?;
        let ts = put(ppid, s, 8, &[0u8; 16])?;
        let got = parent_remote.raw(libc::SYS_rt_sigtimedwait, &[set, 0, ts, 8]).step(ppid, || "remote rt_sigtimedwait(SIGCHLD)".into())?;
        if got != chld as i64 {
            return Err(EngineError::Incompatible(format!(
                "pid {}: the SIGCHLD of zombie {} did not reach its parent (rt_sigtimedwait returned {got})",
                parent.pid, p.pid
            )));
        }
    }
    Ok(())
}

/// Ends puppet `host` at once with exit code 0 (a helper of the restore).
pub(crate) fn exit_now(host: i32, base: ptrace::Regs, syscall_ip: u64) -> Result<()> {
    die(host, base, 0, syscall_ip, !0)
}

/// Ends puppet `host` (a helper of the restore, stopped under our ptrace)
/// with wait status `status`: `remote` runs in it, `s` is its scratch
/// area. A status with the core flag makes it write a few pages of core
/// into `core` (its working directory from then, by name), as a zombie's
/// puppet does, with the core limit raised to its hard limit; the core is
/// removed at once. Otherwise it dumps no core.
pub(crate) fn end_helper(mut remote: Remote, s: Scratch, base: ptrace::Regs, status: i32, core: Option<&CoreDir>) -> Result<()> {
    let host = remote.tid();
    if status & 0x80 != 0 {
        let core = core.ok_or_else(|| EngineError::Incompatible(format!("helper {host} must dump core and no core directory is open")))?;
        let path = put_path(host, s, 0, &core.path.to_string_lossy())?;
        remote.call(libc::SYS_chdir, &[path]).step(host, || "remote chdir to the core directory".into())?;
        let limits = s.addr + 4096 - 16;
        remote
            .call(libc::SYS_prlimit64, &[0, libc::RLIMIT_CORE as u64, 0, limits])
            .step(host, || "remote prlimit(RLIMIT_CORE) read".into())?;
        let mut b = [0u8; 16];
        ptrace::read_mem(host, limits, &mut b).step(host, || "read RLIMIT_CORE".into())?;
        b.copy_within(8..16, 0);
        let at = put(host, s, 4096 - 16, &b)?;
        remote
            .call(libc::SYS_prlimit64, &[0, libc::RLIMIT_CORE as u64, at, 0])
            .step(host, || "remote prlimit(RLIMIT_CORE) raise".into())?;
        remote.call(libc::SYS_prctl, &[libc::PR_SET_DUMPABLE as u64, 1, 0, 0, 0]).step(host, || "remote PR_SET_DUMPABLE 1".into())?;
        let filter = format!("/proc/{host}/coredump_filter");
        std::fs::write(&filter, "0").map_err(crate::io_err(format!("write {filter}")))?;
        let died = die(host, base, status, remote.syscall_ip(), 0);
        core.clear()?;
        return died;
    }
    if CORE_SIGNALS.contains(&(status & 0x7f)) {
        remote.call(libc::SYS_prctl, &[libc::PR_SET_DUMPABLE as u64, 0, 0, 0, 0]).step(host, || "remote PR_SET_DUMPABLE 0".into())?;
    }
    die(host, base, status, remote.syscall_ip(), 0)
}

/// Ends the puppet with wait status `status`: exit_group for a normal
/// exit. A signal is sent once the puppet is detached (sleeping in pause):
/// only to an untraced task does the kernel take the fatal path that the
/// original took, which leaves the signal among the zombie's pending ones.
fn die(host: i32, base: ptrace::Regs, status: i32, syscall_ip: u64, sigmask: u64) -> Result<()> {
    let sig = status & 0x7f;
    let mut regs = base;
    regs.rip = syscall_ip;
    regs.orig_rax = u64::MAX;
    if sig == 0 {
        ptrace::set_sigmask(host, sigmask).step(host, || "write zombie sigmask".into())?;
        regs.rax = libc::SYS_exit_group as u64;
        regs.rdi = ((status >> 8) & 0xff) as u64;
        ptrace::set_regs(host, &regs).step(host, || "set up exit_group".into())?;
        ptrace::cont(host, 0).step(host, || "resume zombie to exit".into())?;
        loop {
            match ptrace::wait(host).step(host, || "wait for zombie exit".into())?.1 {
                Stop::Exited(code) if code == (status >> 8) & 0xff => return Ok(()),
                Stop::Exited(_) | Stop::Killed(_) => {
                    return Err(EngineError::Incompatible(format!("zombie puppet {host} ended other than with wait status {status:#x}")))
                }
                _ => ptrace::cont(host, 0).step(host, || "resume zombie to exit".into())?,
            }
        }
    }
    ptrace::set_sigmask(host, sigmask & !(1u64 << (sig - 1))).step(host, || "write zombie sigmask".into())?;
    regs.rax = libc::SYS_pause as u64;
    ptrace::set_regs(host, &regs).step(host, || "set up pause".into())?;
    ptrace::detach(host, 0).step(host, || "detach zombie before its signal".into())?;
    // The kernel's fatal shortcut needs the task asleep with no signal
    // pending: wait until it sleeps in pause.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !proc::read(host, "syscall").is_ok_and(|s| s.split_whitespace().next() == Some(&libc::SYS_pause.to_string())) {
        if std::time::Instant::now() > deadline {
            return Err(EngineError::Incompatible(format!("zombie puppet {host} did not reach pause")));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    lpm_sys::misc::kill(host, sig);
    loop {
        match Stat::read(host) {
            Ok(st) if st.state() == 'Z' => {
                let got = st.num(52) as i32;
                if got != status {
                    return Err(EngineError::Incompatible(format!("zombie puppet {host} has wait status {got:#x}, not {status:#x}")));
                }
                return Ok(());
            }
            Ok(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(1)),
            Ok(st) => {
                return Err(EngineError::Incompatible(format!("zombie puppet {host} did not die of signal {sig} (state {})", st.state())))
            }
            Err(e) => return Err(e),
        }
    }
}
