//! The restore checks itself ([`crate::RestoreOptions::verify`], `lpm
//! restore --verify`, always on the target of a migration): once the tree
//! is rebuilt, every thread at its final registers and none of them run
//! yet, what the kernel shows of every task is read back and compared
//! with the image. Any difference is an error naming the process, the
//! object and the field, recorded against found; the restore then kills
//! the tree (a migration rolls back: the partition runs on its source).
//! The checkpoint reads its still stopped tree back the same way once the
//! image is written: what moved while the tree was frozen fails the
//! checkpoint (and the tree goes on as it was) rather than leaving an
//! image that differs from it.
//!
//! One table, [`PROBES`], knows for each kind of state how to read it back
//! and how to compare it: ids and tree links, credentials, signal
//! dispositions and masks, limits, personality and umask, paths, memory
//! areas, descriptors and whom the descriptor table is shared with, the
//! processes pidfds name, the namespaces
//! namespace descriptors name, inotify watches, fanotify marks. A probe compares only what the image records; what
//! a host gives anew (host pids at the outer level, inode numbers) it maps
//! or leaves out.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;

use lpm_image::{FileImage, FileKind, InetAddr, PipeImage, Process, VmaKind};

use crate::proc::{self, MapEntry, Stat, Status};
use crate::{EngineError, Result, StepExt};

/// A restored process as the probes see it: its image, its host pid, its
/// threads' host tids in image order, and how image pids map to host pids.
pub(crate) struct Restored<'a> {
    /// The process's image.
    pub image: &'a Process,
    /// Its host pid.
    pub host: i32,
    /// Its threads' host tids, in the image's order.
    pub tids: &'a [i32],
    /// Every process of the tree: image pid to host pid.
    pub hosts: &'a HashMap<u32, i32>,
    /// The cgroup directories the tree was restored into.
    pub cgroups: &'a [PathBuf],
    /// The image's open files, by id.
    pub files: &'a HashMap<u32, &'a FileImage>,
    /// The image's unlinked files (ghosts), by id.
    pub ghosts: &'a HashMap<u64, &'a lpm_image::GhostImage>,
    /// The image's pipes and FIFOs, by id.
    pub pipes: &'a HashMap<u64, &'a PipeImage>,
    /// Every process of the image (a terminal's foreground group is named
    /// by its leader's pid as the session sees it).
    pub processes: &'a [Process],
    /// The image's shared memory objects.
    pub shmems: &'a [lpm_image::ShmemImage],
    /// Recorded pty index to the index the restored pty got (identity
    /// when the dump reads its own tree back).
    pub ptys: &'a HashMap<u32, u32>,
    /// Read right after the dump, the tree still stopped: its threads'
    /// signal masks are the dump's own (every signal blocked for its
    /// remote calls), not compared.
    pub dumped: bool,
}

/// The environment variable through which a test makes the restore get
/// one field wrong on purpose (`umask`; `ghost-copy`: the mappings of an
/// unlinked file map a copy of it; `fsnotify-ns`: inotify watches and
/// fanotify marks are added through lpm's own mount namespace;
/// `hugetlb-small`: private hugetlbfs areas mapped in 4 KiB pages;
/// `mask-rw`: the masks of a mount namespace mounted writable), or
/// the checkpoint record one wrong
/// (`dump-umask`), to see [`PROBES`] name it; inert when unset, and
/// nobody but the tests sets it.
pub const SABOTAGE_ENV: &str = "LPM_SABOTAGE_RESTORE";

/// Whether a test asked the restore to get `field` wrong.
pub(crate) fn sabotaged(field: &str) -> bool {
    std::env::var(SABOTAGE_ENV).is_ok_and(|v| v.split(',').any(|f| f.trim() == field))
}

/// One field of the restored tree that differs from the image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The process (image pid).
    pub pid: u32,
    /// Its host pid.
    pub host: i32,
    /// What was read back (`status`, `fd 3`, `area 0x...-0x...`,
    /// `thread 2`).
    pub object: String,
    /// The field.
    pub field: String,
    /// What the image says.
    pub recorded: String,
    /// What the kernel shows.
    pub found: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} (host {}) {} {}: recorded {}, found {}", self.pid, self.host, self.object, self.field, self.recorded, self.found)
    }
}

/// Collects a probe's mismatches.
struct Found<'a, 'b> {
    p: &'b Restored<'a>,
    out: Vec<Mismatch>,
}

impl Found<'_, '_> {
    fn cmp<T: PartialEq + fmt::Debug>(&mut self, object: &str, field: &str, recorded: T, found: T) {
        if recorded != found {
            self.out.push(Mismatch {
                pid: self.p.image.pid,
                host: self.p.host,
                object: object.to_string(),
                field: field.to_string(),
                recorded: format!("{recorded:?}"),
                found: format!("{found:?}"),
            });
        }
    }
}

/// A kind of state the restore reads back: its name, and the comparison.
pub(crate) struct Probe {
    /// What it checks.
    pub name: &'static str,
    check: fn(&Restored<'_>, &mut Found<'_, '_>) -> Result<()>,
    /// It applies to zombies too (they have no memory, files or threads).
    zombies: bool,
}

/// Every probe, in the order they run.
pub(crate) const PROBES: &[Probe] = &[
    Probe { name: "ids", check: ids, zombies: true },
    Probe { name: "credentials", check: creds, zombies: false },
    Probe { name: "signals", check: signals, zombies: false },
    Probe { name: "threads", check: threads, zombies: false },
    Probe { name: "limits", check: limits, zombies: false },
    Probe { name: "process state", check: process_state, zombies: false },
    Probe { name: "paths", check: paths, zombies: false },
    Probe { name: "memory areas", check: areas, zombies: false },
    Probe { name: "huge pages", check: huge_pages, zombies: false },
    Probe { name: "descriptors", check: descriptors, zombies: false },
    Probe { name: "descriptor table", check: fd_table, zombies: false },
    Probe { name: "unlinked inodes", check: ghosts, zombies: false },
    Probe { name: "pipes", check: pipes, zombies: false },
    Probe { name: "sockets", check: sockets, zombies: false },
    Probe { name: "pidfds", check: pidfds, zombies: false },
    Probe { name: "namespace descriptors", check: ns_fds, zombies: false },
    Probe { name: "inotify watches", check: inotify_watches, zombies: false },
    Probe { name: "fanotify groups", check: fanotify_groups, zombies: false },
    Probe { name: "cgroups", check: cgroups, zombies: false },
    Probe { name: "mount masks", check: mount_masks, zombies: false },
    Probe { name: "terminal", check: terminal, zombies: true },
    Probe { name: "ptys", check: ptys, zombies: false },
];

/// Reads back every process of the restored tree and compares it with
/// `tree`; all the differences, or none.
pub(crate) fn tree(procs: &[Restored<'_>]) -> Result<()> {
    let mut all = Vec::new();
    for p in procs {
        let zombie = p.image.zombie.is_some();
        for probe in PROBES.iter().filter(|pr| pr.zombies || !zombie) {
            let mut f = Found { p, out: Vec::new() };
            (probe.check)(p, &mut f).map_err(|e| EngineError::Verify { mismatches: vec![], why: format!("probe {}: {e}", probe.name) })?;
            all.extend(f.out);
        }
    }
    if all.is_empty() {
        Ok(())
    } else {
        Err(EngineError::Verify { mismatches: all, why: String::new() })
    }
}

/// The host pid of image pid `pid`, or 0 when it is not in the tree.
fn host_of(p: &Restored<'_>, pid: u32) -> i32 {
    p.hosts.get(&pid).copied().unwrap_or(0)
}

/// Pids in nested namespaces, the parent, the group and the session (the
/// latter three mapped to host pids; a group or session of a process
/// outside the tree is the restorer's to give, and not compared).
fn ids(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    let st = Status::read(p.host)?;
    let found = st.nums("NSpid");
    if p.image.nspid.len() > 1 && found.len() == p.image.nspid.len() {
        f.cmp("status", "NSpid (inner levels)", &p.image.nspid[1..], &found[1..]);
    } else if p.image.nspid.len() > 1 {
        f.cmp("status", "NSpid levels", p.image.nspid.len(), found.len());
    }
    let stat = Stat::read(p.host)?;
    if p.image.ppid != 0 {
        f.cmp("stat", "ppid", host_of(p, p.image.ppid), stat.num(4) as i32);
    }
    for (field, n, recorded) in [("pgid", 5, p.image.pgid), ("sid", 6, p.image.sid)] {
        if p.hosts.contains_key(&recorded) {
            f.cmp("stat", field, host_of(p, recorded), stat.num(n) as i32);
        }
    }
    let zombie = stat.state() == 'Z';
    f.cmp("stat", "zombie", p.image.zombie.is_some(), zombie);
    if let (Some(z), true) = (&p.image.zombie, zombie) {
        f.cmp("stat", "wait status", z.exit_status, stat.num(52) as u32);
    }
    Ok(())
}

/// Uids, gids, groups, capability sets, no_new_privs.
fn creds(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    let st = Status::read(p.host)?;
    if let Some(c) = &p.image.creds {
        f.cmp("status", "Uid", c.uids.clone(), st.nums("Uid"));
        f.cmp("status", "Gid", c.gids.clone(), st.nums("Gid"));
        f.cmp("status", "Groups", c.groups.clone(), st.nums("Groups"));
        let found: Vec<u64> = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"].iter().map(|k| st.hex(k)).collect();
        f.cmp("status", "capabilities (inh prm eff bnd amb)", c.caps.clone(), found);
    }
    if let Some(pr) = &p.image.prctl {
        f.cmp("status", "NoNewPrivs", pr.no_new_privs, st.get("NoNewPrivs") == "1");
    }
    Ok(())
}

/// Ignored and caught signals (from the recorded handlers), pending ones
/// shared by the process.
fn signals(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    let st = Status::read(p.host)?;
    let (mut ign, mut cgt) = (0u64, 0u64);
    for a in &p.image.sigactions {
        let bit = 1u64 << (a.signo - 1);
        match a.handler {
            0 => {}
            1 => ign |= bit,
            _ => cgt |= bit,
        }
    }
    f.cmp("status", "SigIgn", format!("{ign:016x}"), format!("{:016x}", st.hex("SigIgn")));
    f.cmp("status", "SigCgt", format!("{cgt:016x}"), format!("{:016x}", st.hex("SigCgt")));
    Ok(())
}

/// Per thread: its name, nice value and blocked signals (the nice value
/// by getpriority and the mask from ptrace, which holds every thread: a
/// thousand threads' stat and status files would cost the restore 5 %
/// more).
fn threads(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    f.cmp("status", "Threads", p.image.threads.len(), proc::threads(p.host)?.len());
    for (i, (t, &tid)) in p.image.threads.iter().zip(p.tids).enumerate() {
        let object = format!("thread {i} (tid {})", t.tid);
        let comm = proc::read(p.host, &format!("task/{tid}/comm"))?;
        f.cmp(&object, "comm", t.comm.as_str(), comm.trim_end_matches('\n'));
        let nice = rustix::process::getpriority_process(rustix::process::Pid::from_raw(tid))
            .map_err(|e| EngineError::Io { what: format!("read the nice value of thread {tid} back"), source: e.into() })?;
        f.cmp(&object, "nice", t.nice, nice);
        if !p.dumped {
            let mask = lpm_sys::ptrace::get_sigmask(tid).step(tid, || "read the signal mask back".into())?;
            f.cmp(&object, "SigBlk", format!("{:016x}", t.sigmask), format!("{mask:016x}"));
        }
    }
    Ok(())
}

/// Resource limits.
fn limits(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    let found = proc::parse_limits(&proc::read(p.host, "limits")?);
    for l in &p.image.rlimits {
        let now = found.iter().find(|(r, _, _)| *r == l.resource).map(|&(_, s, h)| (s, h));
        f.cmp("limits", &format!("resource {}", l.resource), Some((l.soft, l.hard)), now);
    }
    Ok(())
}

/// Umask and personality.
fn process_state(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    let st = Status::read(p.host)?;
    f.cmp("status", "Umask", format!("{:04o}", p.image.umask), format!("{:04o}", st.oct("Umask")));
    let pers = u32::from_str_radix(proc::read(p.host, "personality")?.trim(), 16).unwrap_or(u32::MAX);
    f.cmp("personality", "value", format!("{:08x}", p.image.personality), format!("{pers:08x}"));
    if p.image.stop_signal != 0 && !p.dumped {
        // Stopped again at release by its stop signal, pending for the
        // whole process until then.
        let bit = 1u64 << (p.image.stop_signal - 1);
        f.cmp("status", "stop signal pending", true, st.hex("ShdPnd") & bit != 0);
    }
    Ok(())
}

/// The working directory, root and executable.
fn paths(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    f.cmp("paths", "cwd", p.image.cwd.clone(), proc::link(p.host, "cwd")?);
    f.cmp("paths", "root", p.image.root.clone(), proc::link(p.host, "root")?);
    if let Some(mm) = p.image.mm.as_ref().filter(|m| !m.exe.is_empty()) {
        f.cmp("paths", "exe", mm.exe.clone(), proc::link(p.host, "exe")?);
    }
    Ok(())
}

/// What a memory area looks like, for comparison: range, protection,
/// sharing, and the name where the restore must give the same one (a
/// file's path and offset, the kernel's special areas, heap and stack).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Area {
    start: u64,
    end: u64,
    perms: String,
    name: String,
    offset: u64,
}

impl Area {
    /// Whether `next` continues `self` as the kernel would merge it.
    fn continued_by(&self, next: &Area) -> bool {
        self.end == next.start
            && self.perms == next.perms
            && self.name == next.name
            && (self.name.is_empty() || self.name.starts_with('[') || self.offset + (self.end - self.start) == next.offset)
    }
}

/// Merges areas the kernel may or may not have merged, so that only what
/// a program can tell apart is compared.
fn merged(mut v: Vec<Area>) -> Vec<Area> {
    v.sort_by_key(|a| a.start);
    let mut out: Vec<Area> = Vec::with_capacity(v.len());
    for a in v {
        match out.last_mut() {
            Some(last) if last.continued_by(&a) => last.end = a.end,
            _ => out.push(a),
        }
    }
    out
}

/// The name compared for an area of kind `kind` named `path`: empty for
/// anonymous memory (private or shared: the object behind a shared one is
/// the restore's own), the path for files and special areas.
fn area_name(kind: Option<VmaKind>, path: &str) -> String {
    match kind {
        Some(VmaKind::AnonShared) => String::new(),
        Some(VmaKind::AnonPrivate) if !matches!(path, "[heap]" | "[stack]") => String::new(),
        _ => path.to_string(),
    }
}

fn perms(prot: u32, shared: bool) -> String {
    let b = |bit: i32, c: char| if prot & bit as u32 != 0 { c } else { '-' };
    format!("{}{}{}{}", b(libc::PROT_READ, 'r'), b(libc::PROT_WRITE, 'w'), b(libc::PROT_EXEC, 'x'), if shared { 's' } else { 'p' })
}

/// Every memory area: the image's (its areas and SysV attachments) and
/// /proc/PID/maps, merged alike, must be the same list.
fn areas(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    let Some(mm) = &p.image.mm else { return Ok(()) };
    let mut recorded: Vec<Area> = mm
        .vmas
        .iter()
        .map(|v| {
            let kind = VmaKind::try_from(v.kind).ok();
            let shared = v.flags & libc::MAP_SHARED as u32 != 0;
            let file = matches!(kind, Some(VmaKind::FilePrivate | VmaKind::FileShared));
            Area {
                start: v.start,
                end: v.end,
                perms: perms(v.prot, shared),
                name: area_name(kind, &v.path),
                offset: if file { v.pgoff } else { 0 },
            }
        })
        .collect();
    recorded.extend(p.image.sysv_shm_maps.iter().map(|s| Area {
        start: s.start,
        end: s.end,
        perms: perms(s.prot, true),
        name: String::new(),
        offset: 0,
    }));
    let found: Vec<Area> = proc::maps(p.host)?
        .iter()
        .map(|e: &MapEntry| {
            let kind = classify(e);
            let file = matches!(kind, Some(VmaKind::FilePrivate | VmaKind::FileShared));
            Area {
                start: e.start,
                end: e.end,
                perms: e.perms.clone(),
                name: area_name(kind, &e.path),
                offset: if file { e.offset } else { 0 },
            }
        })
        .collect();
    let (recorded, found) = (merged(recorded), merged(found));
    if recorded != found {
        // The first difference names the area.
        let i = recorded.iter().zip(&found).position(|(a, b)| a != b).unwrap_or(recorded.len().min(found.len()));
        let show = |a: Option<&Area>| {
            a.map(|a| format!("{:#x}-{:#x} {} {:?} +{:#x}", a.start, a.end, a.perms, a.name, a.offset)).unwrap_or_else(|| "nothing".into())
        };
        let at = recorded.get(i).or(found.get(i)).map(|a| a.start).unwrap_or(0);
        f.cmp(
            &format!("area at {at:#x}"),
            &format!("maps ({} areas recorded, {} found)", recorded.len(), found.len()),
            show(recorded.get(i)),
            show(found.get(i)),
        );
    }
    Ok(())
}

/// hugetlbfs areas (hugetlb.rs): smaps flags each ht with the recorded
/// page size (KernelPageSize), shared or private as recorded, and holds
/// the huge pages the image holds, no more: a private area's its page
/// table maps, a shared one's object (its block count).
fn huge_pages(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    let Some(mm) = &p.image.mm else { return Ok(()) };
    let huge: Vec<_> = mm.vmas.iter().filter(|v| v.huge_page_size != 0).collect();
    if huge.is_empty() {
        return Ok(());
    }
    let smaps = crate::hugetlb::smaps_pages(p.host)?;
    let maps = proc::maps(p.host)?;
    for v in huge {
        let object = format!("area {:#x}-{:#x}", v.start, v.end);
        let size = v.huge_page_size;
        let (page, ht) = smaps.get(&v.start).copied().unwrap_or_default();
        f.cmp(&object, "hugetlbfs (VmFlags ht)", true, ht);
        f.cmp(&object, "KernelPageSize", size, page);
        let shared = v.flags & libc::MAP_SHARED as u32 != 0;
        let e = maps.iter().find(|e| e.start == v.start);
        f.cmp(&object, "shared", shared, e.is_some_and(|e| e.shared()));
        if !ht || page != size {
            continue;
        }
        if shared {
            let Some(s) = p.shmems.iter().find(|s| s.id == v.shmem_id) else { continue };
            let path = format!("/proc/{}/map_files/{:x}-{:x}", p.host, v.start, v.end);
            let file = std::fs::File::open(&path).map_err(crate::io_err(format!("open {path}")))?;
            let holds = crate::hugetlb::object_pages(&file, size).map_err(crate::io_err(format!("stat {path}")))?;
            let recorded = crate::hugetlb::held(&s.pages, 0, s.size, size).len() as u64;
            f.cmp(&object, "huge pages its object holds", recorded, holds);
        } else {
            let recorded: Vec<u64> = crate::hugetlb::held(&mm.pages, v.start, v.end, size).into_iter().collect();
            let found: Vec<u64> = crate::hugetlb::present(p.host, v.start, v.end, size)?.into_iter().collect();
            f.cmp(&object, "huge pages held", recorded, found);
        }
    }
    Ok(())
}

/// The kind of a /proc maps line, as the dump names it.
fn classify(e: &MapEntry) -> Option<VmaKind> {
    Some(match e.path.as_str() {
        "[vdso]" => VmaKind::Vdso,
        "[vvar]" => VmaKind::Vvar,
        "[vvar_vclock]" => VmaKind::VvarVclock,
        "[vsyscall]" => VmaKind::Vsyscall,
        _ if e.shared()
            && (e.path.is_empty() || e.path.starts_with("/dev/zero") || e.path.starts_with("/memfd:") || e.path.starts_with("/SYSV")) =>
        {
            VmaKind::AnonShared
        }
        "" | "[heap]" | "[stack]" => VmaKind::AnonPrivate,
        crate::hugetlb::ANON_HUGEPAGE if e.shared() => VmaKind::AnonShared,
        crate::hugetlb::ANON_HUGEPAGE => VmaKind::AnonPrivate,
        // A private mapping of a shared anonymous area's object or of a
        // memfd, as mem.rs names it.
        "/dev/zero (deleted)" => VmaKind::ShmemPrivate,
        p if p.starts_with("/memfd:") => VmaKind::ShmemPrivate,
        p if p.starts_with("[anon:") || p.starts_with("/dev/zero") => VmaKind::AnonPrivate,
        p if p.starts_with('/') && e.shared() => VmaKind::FileShared,
        p if p.starts_with('/') => VmaKind::FilePrivate,
        _ => return None,
    })
}

/// Pty masters: the pty's termios, window size, packet mode and lock, and
/// how many bytes of output wait for the master.
fn ptys(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    use std::os::fd::AsRawFd;
    for (fd, file) in of_kind(p, &[FileKind::Tty]) {
        if file.tty.as_ref().is_some_and(|t| t.dev_tty) {
            let link = proc::link(p.host, &format!("fd/{fd}"))?;
            f.cmp(&format!("fd {fd}"), "opened through", "/dev/tty", link.as_str());
        }
        if let Some(t) = file.tty.as_ref().filter(|t| t.external) {
            // A shell job's terminal: the restoring one, with the termios
            // it had.
            let term = take(p, fd)?;
            let found = lpm_sys::misc::tty_termios(term.as_raw_fd()).step(p.host, || format!("read the termios of fd {fd}"))?;
            f.cmp(&format!("fd {fd} (the user's terminal, /dev/pts/{} at checkpoint)", t.index), "termios", &t.termios, &found);
            continue;
        }
        let Some(t) = file.tty.as_ref().filter(|t| t.master) else { continue };
        let m = take(p, fd)?;
        let object = format!("fd {fd} (pty {} master)", t.index);
        let st = lpm_sys::misc::pty_get(m.as_raw_fd()).step(p.host, || format!("read the state of fd {fd}'s pty"))?;
        f.cmp(&object, "termios", &t.termios, &st.termios);
        f.cmp(&object, "window size", t.winsize.clone(), st.winsize.iter().map(|&v| v as u32).collect::<Vec<_>>());
        f.cmp(&object, "packet mode", t.packet, st.packet);
        f.cmp(&object, "slave locked", t.locked, st.locked);
        let (out, _) = lpm_sys::misc::tty_queues(m.as_raw_fd()).step(p.host, || format!("read fd {fd}'s queue length"))?;
        f.cmp(&object, "bytes of output pending", t.pending_output.len(), out as usize);
    }
    Ok(())
}

/// A tty_nr of /proc/PID/stat as a name: a pty's path, or the device.
fn tty_name(nr: u64) -> Option<String> {
    let (major, minor) = ((nr >> 8) & 0xfff, (nr & 0xff) | ((nr >> 12) & 0xfff00));
    match major {
        0 if nr == 0 => None,
        136..=143 => Some(format!("/dev/pts/{}", (major - 136) * 256 + minor)),
        _ => Some(format!("device {major}:{minor}")),
    }
}

/// The controlling terminal, and the foreground group of a session
/// leader's, where the session is the tree's (otherwise the restorer's to
/// give).
fn terminal(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    if !p.hosts.contains_key(&p.image.sid) {
        return Ok(());
    }
    let stat = Stat::read(p.host)?;
    let index = p.image.ctty.map(|i| p.ptys.get(&i).copied().unwrap_or(i));
    f.cmp("stat", "controlling terminal", index.map(|i| format!("/dev/pts/{i}")), tty_name(stat.num(7)));
    let Some(ctty) = p.image.ctty.filter(|_| p.image.sid == p.image.pid) else { return Ok(()) };
    let fg = p.files.values().filter_map(|f| f.tty.as_ref()).find(|t| t.index == ctty && t.session == p.image.pid).map(|t| t.fg_pgrp);
    let view = |q: &Process| q.nspid.get(p.image.nspid.len().max(1) - 1).copied().unwrap_or(q.pid);
    let leader = fg.and_then(|g| p.processes.iter().find(|q| q.sid == p.image.pid && q.pgid == q.pid && view(q) == g));
    if let Some(q) = leader {
        f.cmp("stat", "foreground group (tpgid)", host_of(p, q.pid), stat.num(8) as i32);
    }
    Ok(())
}

/// The descriptor table: the same numbers, each with its close-on-exec
/// flag, its file's status flags and (for a regular file) its offset.
fn descriptors(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    let mut found: Vec<u32> = std::fs::read_dir(format!("/proc/{}/fd", p.host))
        .map_err(crate::io_err(format!("list /proc/{}/fd", p.host)))?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    found.sort_unstable();
    let mut recorded: Vec<u32> = p.image.fds.iter().map(|d| d.fd).collect();
    recorded.sort_unstable();
    if recorded != found {
        f.cmp("descriptors", "numbers", recorded, found);
        return Ok(());
    }
    for d in &p.image.fds {
        let info = proc::parse_fdinfo(&proc::read(p.host, &format!("fdinfo/{}", d.fd))?);
        let object = format!("fd {}", d.fd);
        f.cmp(&object, "close-on-exec", d.cloexec, info.flags & libc::O_CLOEXEC as u32 != 0);
        let Some(file) = p.files.get(&d.file_id) else { continue };
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        f.cmp(&object, "flags", format!("{:o}", file.flags), format!("{flags:o}"));
        let kind = FileKind::try_from(file.kind).ok();
        if matches!(kind, Some(FileKind::Regular | FileKind::Unlinked | FileKind::Memfd)) {
            f.cmp(&object, "offset", file.pos, info.pos);
        }
        if matches!(kind, Some(FileKind::Regular | FileKind::Fifo | FileKind::CharDevice)) && file.ghost_id == 0 {
            f.cmp(&object, "path", file.path.clone(), proc::link(p.host, &format!("fd/{}", d.fd))?);
        }
        if kind == Some(FileKind::Unlinked) || file.ghost_id != 0 {
            f.cmp(&object, "path", format!("{} (deleted)", file.path), proc::link(p.host, &format!("fd/{}", d.fd))?);
        }
    }
    Ok(())
}

/// Whom the process shares its descriptor table with: its parent when
/// the image says so, never the restorer (whose table the puppets spawned
/// ahead of a migration's stop share until each takes its own copy,
/// ahead.rs: one left sharing would hold lpmd's descriptors).
fn fd_table(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    let ours = std::process::id() as i32;
    let with_us = lpm_sys::misc::same_fd_table(p.host, ours).step(p.host, || format!("kcmp KCMP_FILES with {ours}"))?;
    f.cmp("descriptor table", "shared with the restorer", false, with_us);
    if p.image.ppid != 0 {
        let parent = host_of(p, p.image.ppid);
        let shared = lpm_sys::misc::same_fd_table(p.host, parent).step(p.host, || format!("kcmp KCMP_FILES with {parent}"))?;
        f.cmp("descriptor table", "shared with the parent", p.image.shares_parent_files, shared);
    }
    Ok(())
}

/// An unlinked inode held: its ghost id, what holds it, and the inode's
/// device, number and links as found.
type GhostHold = (u64, String, (u64, u64, u64));

/// Where process `q` (host pid `host`) holds each unlinked inode of the
/// image (ghost id, what holds it, and the inode's device, number and
/// links as found).
fn ghost_holds(q: &Process, host: i32, files: &HashMap<u32, &FileImage>) -> Result<Vec<GhostHold>> {
    use std::os::unix::fs::MetadataExt;
    let stat = |rel: String| -> Result<(u64, u64, u64)> {
        let path = format!("/proc/{host}/{rel}");
        let m = std::fs::metadata(&path).map_err(crate::io_err(format!("stat {path}")))?;
        Ok((m.dev(), m.ino(), m.nlink()))
    };
    let mut out = Vec::new();
    for d in &q.fds {
        if let Some(file) = files.get(&d.file_id).filter(|f| f.ghost_id != 0) {
            out.push((file.ghost_id, format!("fd {}", d.fd), stat(format!("fd/{}", d.fd))?));
        }
    }
    for v in q.mm.iter().flat_map(|m| &m.vmas).filter(|v| v.ghost_id != 0) {
        out.push((v.ghost_id, format!("area {:#x}-{:#x}", v.start, v.end), stat(format!("map_files/{:x}-{:x}", v.start, v.end))?));
    }
    if q.cwd_ghost != 0 {
        out.push((q.cwd_ghost, "working directory".into(), stat("cwd".into())?));
    }
    Ok(out)
}

/// Unlinked files and removed directories (descriptors, mappings, the
/// working directory): each still without links, and whatever held one
/// inode at dump holds one inode now, within the process and across the
/// tree (the first process of the image holding it is the reference),
/// and two inodes stay two.
fn ghosts(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    let mine = ghost_holds(p.image, p.host, p.files)?;
    let mut seen: HashMap<u64, (String, (u64, u64))> = HashMap::new();
    for (id, what, (dev, ino, nlink)) in &mine {
        // A file whose name was removed while others remain keeps them.
        let links = p.ghosts.get(id).map_or(0, |g| g.nlink as u64);
        f.cmp(what, "links of the unlinked inode", links, *nlink);
        match seen.get(id) {
            Some((first, inode)) => f.cmp(what, &format!("inode (as {first}: unlinked {id})"), *inode, (*dev, *ino)),
            None => {
                if let Some((other, _)) = seen.iter().find(|(_, (_, i))| *i == (*dev, *ino)) {
                    f.cmp(what, "unlinked inode", *id, *other);
                }
                seen.insert(*id, (what.clone(), (*dev, *ino)));
            }
        }
    }
    for (id, (what, inode)) in &seen {
        let first = p.processes.iter().filter(|q| q.zombie.is_none()).find(|q| {
            q.cwd_ghost == *id
                || q.mm.iter().flat_map(|m| &m.vmas).any(|v| v.ghost_id == *id)
                || q.fds.iter().any(|d| p.files.get(&d.file_id).is_some_and(|x| x.ghost_id == *id))
        });
        let Some(q) = first.filter(|q| q.pid != p.image.pid) else { continue };
        let host = host_of(p, q.pid);
        if host == 0 {
            continue;
        }
        if let Some((_, qwhat, (dev, ino, _))) = ghost_holds(q, host, p.files)?.into_iter().find(|(g, _, _)| g == id) {
            f.cmp(what, &format!("inode (as {qwhat} of pid {}: unlinked {id})", q.pid), (dev, ino), *inode);
        }
    }
    Ok(())
}

/// The descriptors of `p` whose file is of one of `kinds`, with it.
fn of_kind<'a>(p: &'a Restored<'_>, kinds: &'a [FileKind]) -> impl Iterator<Item = (u32, &'a FileImage)> + 'a {
    p.image.fds.iter().filter_map(move |d| {
        let file = *p.files.get(&d.file_id)?;
        FileKind::try_from(file.kind).ok().filter(|k| kinds.contains(k)).map(|_| (d.fd, file))
    })
}

/// A restored descriptor of `p`, taken to look at (pidfd_getfd).
fn take(p: &Restored<'_>, fd: u32) -> Result<std::os::fd::OwnedFd> {
    lpm_sys::net::steal_fd(p.host, fd as i32).step(p.host, || format!("take fd {fd} to read it back"))
}

/// Pipes and FIFOs: their capacity, and how many bytes they hold.
fn pipes(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    use std::os::fd::{AsFd, AsRawFd};
    for (fd, file) in of_kind(p, &[FileKind::Pipe, FileKind::Fifo]) {
        let Some(pipe) = p.pipes.get(&file.pipe_id) else { continue };
        let end = take(p, fd)?;
        let object = format!("fd {fd}");
        if pipe.capacity != 0 {
            let cap = lpm_sys::misc::pipe_size(end.as_raw_fd()).step(p.host, || format!("read fd {fd}'s capacity"))?;
            f.cmp(&object, "pipe capacity", pipe.capacity, cap);
        }
        let queued = lpm_sys::net::ioctl_int(end.as_fd(), libc::FIONREAD).step(p.host, || format!("read fd {fd}'s queue length"))?;
        f.cmp(&object, "bytes in the pipe", pipe.data.len(), queued as usize);
    }
    Ok(())
}

/// pidfds: the process each names (its host pid, through
/// PIDFD_GET_INFO), or for one whose process was reaped, that it was and
/// with which wait status.
fn pidfds(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    use lpm_sys::pidfd::{info, INFO_EXIT, INFO_PID};
    use std::os::fd::AsFd;
    for (fd, file) in of_kind(p, &[FileKind::Pidfd]) {
        let Some(t) = &file.pidfd else { continue };
        let pidfd = take(p, fd)?;
        let object = format!("fd {fd}");
        let got = info(pidfd.as_fd(), INFO_PID | INFO_EXIT).step(p.host, || format!("PIDFD_GET_INFO on fd {fd}"))?;
        match t.reaped_status {
            Some(status) => {
                f.cmp(&object, "target reaped", true, got.mask & INFO_PID == 0);
                f.cmp(&object, "target's wait status", Some(status), (got.mask & INFO_EXIT != 0).then_some(got.exit_code));
            }
            None => f.cmp(&object, "target", Some(host_of(p, t.pid)), (got.mask & INFO_PID != 0).then_some(got.pid as i32)),
        }
    }
    Ok(())
}

/// Hex field `key` of one fdinfo line.
fn fdinfo_hex(line: &str, key: &str) -> Option<u64> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix(':')).and_then(|v| u64::from_str_radix(v, 16).ok())
}

/// The kernel's s_dev of fdinfo (major << 20 | minor) as st_dev.
fn sdev(line: &str) -> Option<u64> {
    fdinfo_hex(line, "sdev").map(|d| libc::makedev((d >> 20) as u32, (d & 0xfffff) as u32))
}

/// The host pid of the restored process a watch's or mark's paths are
/// seen from (`seen_from`, else the first holder of `file`), if restored.
fn seen_from(p: &Restored<'_>, seen_from: u32, file: u32) -> i32 {
    let pid = if seen_from != 0 {
        seen_from
    } else {
        p.processes.iter().find(|q| q.fds.iter().any(|d| d.file_id == file)).map_or(p.image.pid, |q| q.pid)
    };
    match host_of(p, pid) {
        0 => p.host,
        h => h,
    }
}

/// The inode (device, number) the tree holds of unlinked inode `id` now,
/// as the first process of the image holding it shows it.
fn ghost_inode(p: &Restored<'_>, id: u64) -> Result<Option<(u64, u64)>> {
    for q in p.processes.iter().filter(|q| q.zombie.is_none()) {
        let host = host_of(p, q.pid);
        if host == 0 {
            continue;
        }
        if let Some((_, _, (dev, ino, _))) = ghost_holds(q, host, p.files)?.into_iter().find(|(g, _, _)| *g == id) {
            return Ok(Some((dev, ino)));
        }
    }
    Ok(None)
}

/// An inotify watch as the probe compares it: wd, mask, inode (device,
/// number).
type Watch = (u64, u64, Option<(u64, u64)>);

/// inotify instances: every watch's descriptor, mask and inode, as
/// fdinfo shows them (a linked inode is the recorded one; an unlinked
/// one is the inode the tree holds of it now).
fn inotify_watches(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    for (fd, file) in of_kind(p, &[FileKind::Inotify]) {
        let Some(img) = &file.inotify else { continue };
        let info = proc::read(p.host, &format!("fdinfo/{fd}"))?;
        let mut found: Vec<Watch> = info
            .lines()
            .filter(|l| l.starts_with("inotify "))
            .filter_map(|l| Some((fdinfo_hex(l, "wd")?, fdinfo_hex(l, "mask")?, sdev(l).zip(fdinfo_hex(l, "ino")))))
            .collect();
        found.sort_unstable();
        let mut recorded = Vec::new();
        for w in &img.watches {
            let inode = if w.ghost_id != 0 { ghost_inode(p, w.ghost_id)? } else { Some((w.dev, w.ino)) };
            recorded.push((w.wd as u64, w.mask as u64, inode));
        }
        f.cmp(&format!("fd {fd}"), "inotify watches (wd, mask, inode)", recorded, found);
    }
    Ok(())
}

/// fanotify groups: flags, event flags, and every mark's flags, masks and
/// object in order, as fdinfo shows them: an inode by device and number,
/// a mount by its mount point where the process the marks are seen from
/// sees it (a mount of another namespace has none there), a filesystem by
/// its device.
fn fanotify_groups(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    for (fd, file) in of_kind(p, &[FileKind::Fanotify]) {
        let Some(img) = &file.fanotify else { continue };
        let info = proc::read(p.host, &format!("fdinfo/{fd}"))?;
        let hex = fdinfo_hex;
        let lines: Vec<&str> = info.lines().filter_map(|l| l.strip_prefix("fanotify ")).collect();
        let group = lines.iter().find(|l| l.starts_with("flags:")).map(|l| (hex(l, "flags"), hex(l, "event-flags")));
        let object = format!("fd {fd}");
        f.cmp(&object, "fanotify flags", Some((Some(img.flags as u64), Some(img.event_flags as u64))), group);
        let found: Vec<(Option<u64>, Option<u64>, Option<u64>)> =
            lines.iter().filter(|l| !l.starts_with("flags:")).map(|l| (hex(l, "mflags"), hex(l, "mask"), hex(l, "ignored_mask"))).collect();
        let recorded: Vec<(Option<u64>, Option<u64>, Option<u64>)> =
            img.marks.iter().map(|m| (Some(m.mflags as u64), Some(m.mask), Some(m.ignored_mask))).collect();
        f.cmp(&object, "fanotify marks (mflags, mask, ignored mask)", recorded, found);
        let mountinfo = proc::read(seen_from(p, img.seen_from, file.id), "mountinfo")?;
        let on: Vec<Option<String>> = lines
            .iter()
            .filter(|l| !l.starts_with("flags:"))
            .map(|l| {
                if let Some(ino) = hex(l, "ino") {
                    sdev(l).map(|dev| format!("inode {dev}:{ino}"))
                } else if let Some(id) = hex(l, "mnt_id") {
                    mountinfo.lines().find_map(|m| {
                        let w: Vec<&str> = m.split_whitespace().collect();
                        (w.first() == Some(&id.to_string().as_str())).then(|| w.get(4).map(|p| format!("mount {p}"))).flatten()
                    })
                } else {
                    sdev(l).map(|dev| format!("filesystem {dev}"))
                }
            })
            .collect();
        let recorded: Vec<Option<String>> = img
            .marks
            .iter()
            .map(|m| match lpm_image::FanotifyMarkKind::try_from(m.kind) {
                Ok(lpm_image::FanotifyMarkKind::Inode) => Some(format!("inode {}:{}", m.dev, m.ino)),
                Ok(lpm_image::FanotifyMarkKind::Mount) => Some(format!("mount {}", m.path)),
                Ok(lpm_image::FanotifyMarkKind::Filesystem) => Some(format!("filesystem {}", m.dev)),
                _ => None,
            })
            .collect();
        f.cmp(&object, "fanotify marks' objects", recorded, on);
    }
    Ok(())
}

/// Namespace descriptors: each names the namespace now held by the
/// process of the tree that owns the recorded one.
fn ns_fds(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    for (fd, file) in of_kind(p, &[FileKind::Namespace]) {
        let Some(n) = &file.ns else { continue };
        let want = if n.ns_type == "net" {
            let owner = p
                .processes
                .iter()
                .find(|q| q.namespaces.as_ref().is_some_and(|ns| ns.clone_flags & libc::CLONE_NEWNET as u64 != 0 && ns.net_ns == n.ns));
            match owner {
                Some(q) => Some(crate::files::net_inode(host_of(p, q.pid))?),
                None => None,
            }
        } else {
            let path = format!("/proc/{}/ns/{}", host_of(p, n.member), n.ns_type);
            std::fs::metadata(&path).ok().map(|m| m.ino())
        };
        let got =
            std::fs::File::from(take(p, fd)?).metadata().map_err(crate::io_err(format!("stat namespace fd {fd} of pid {}", p.host)))?.ino();
        f.cmp(&format!("fd {fd}"), &format!("{} namespace (inode)", n.ns_type), want, Some(got));
    }
    Ok(())
}

/// An address as the image writes it, from raw sockaddr bytes.
fn inet_of(sa: &[u8]) -> Option<InetAddr> {
    let family = u16::from_ne_bytes(sa.get(..2)?.try_into().ok()?) as i32;
    let port = u16::from_be_bytes(sa.get(2..4)?.try_into().ok()?) as u32;
    match family {
        libc::AF_INET => Some(InetAddr { ip: sa.get(4..8)?.to_vec(), port, scope_id: 0 }),
        libc::AF_INET6 => {
            Some(InetAddr { ip: sa.get(8..24)?.to_vec(), port, scope_id: u32::from_ne_bytes(sa.get(24..28)?.try_into().ok()?) })
        }
        _ => None,
    }
}

/// Sockets: family, type and protocol; an inet socket's local and peer
/// addresses, a unix socket's bound name, a netlink socket's peer, a
/// packet socket's protocol, interface, fanout group and memberships;
/// every option recorded (but the buffer sizes, which the kernel
/// doubles, and SO_INCOMING_CPU, which it moves).
fn sockets(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    use std::os::fd::AsFd;
    let kinds = [FileKind::UnixSocket, FileKind::InetSocket, FileKind::NetlinkSocket, FileKind::PacketSocket];
    for (fd, file) in of_kind(p, &kinds) {
        let Some(s) = &file.socket else { continue };
        let sock = take(p, fd)?;
        let opt = |name| {
            lpm_sys::net::getsockopt_int(sock.as_fd(), libc::SOL_SOCKET, name).step(p.host, || format!("read fd {fd}'s socket type"))
        };
        let object = format!("fd {fd}");
        if s.family != libc::AF_UNIX as u32 {
            use std::os::unix::fs::MetadataExt;
            let st = std::fs::metadata(format!("/proc/{}/fd/{fd}", p.host)).map_err(crate::io_err(format!("stat fd {fd}")))?;
            f.cmp(&object, "socket owner (uid, gid)", (s.owner_uid, s.owner_gid), (st.uid(), st.gid()));
        }
        f.cmp(&object, "family", s.family as i32, opt(libc::SO_DOMAIN)?);
        f.cmp(&object, "type", s.sock_type as i32, opt(libc::SO_TYPE)?);
        if s.family != libc::AF_UNIX as u32 {
            f.cmp(&object, "protocol", s.protocol as i32, opt(libc::SO_PROTOCOL)?);
        }
        match s.family as i32 {
            libc::AF_INET | libc::AF_INET6 => {
                let local = lpm_sys::net::local_name(sock.as_fd()).ok().and_then(|a| inet_of(&a));
                if let Some(want) = s.local.as_ref().filter(|l| l.port != 0 || !l.ip.iter().all(|&b| b == 0)) {
                    f.cmp(&object, "local address", Some(want.clone()), local);
                }
                // A connection still opening (SYN_SENT) has no peer name
                // to read (getpeername answers ENOTCONN).
                let opening = s.tcp.as_ref().is_some_and(|t| t.tcp_state() == Some(lpm_image::TcpState::SynSent));
                if let Some(want) = s.peer.as_ref().filter(|_| !opening) {
                    use std::os::unix::fs::MetadataExt;
                    let ino = std::fs::metadata(format!("/proc/{}/fd/{fd}", p.host)).map_err(crate::io_err(format!("stat fd {fd}")))?.ino();
                    let peer = crate::files::inet_peer(p.host, ino, s, sock.as_fd());
                    f.cmp(&object, "peer address", Some(want.clone()), peer);
                }
            }
            libc::AF_UNIX if !s.name.is_empty() => {
                let raw = lpm_sys::net::local_name(sock.as_fd()).unwrap_or_default();
                let mut name = raw.get(2..).unwrap_or_default().to_vec();
                // A path name ends at its NUL; an abstract one starts with it.
                if name.first() != Some(&0) {
                    if let Some(end) = name.iter().position(|&b| b == 0) {
                        name.truncate(end);
                    }
                }
                f.cmp(&object, "bound name", String::from_utf8_lossy(&s.name).into_owned(), String::from_utf8_lossy(&name).into_owned());
            }
            libc::AF_NETLINK if s.state == lpm_image::SocketState::Connected as i32 => {
                let raw = lpm_sys::net::peer_name(sock.as_fd()).unwrap_or_default();
                let u = |o: usize| raw.get(o..o + 4).map(|b| u32::from_ne_bytes(b.try_into().unwrap_or_default())).unwrap_or(0);
                f.cmp(&object, "netlink peer (port id, groups)", (s.nl_peer_portid, s.nl_peer_groups), (u(4), u(8)));
            }
            libc::AF_PACKET => packet(p, f, fd, &object, s, sock.as_fd())?,
            _ => {}
        }
        // Binding to an IPv6 address sets IPV6_V6ONLY, which a connection
        // restored in repair mode is (explicitly), unlike one its program
        // let connect(2) bind; it no longer steers anything once connected.
        let v6only_moot = s.tcp.is_some();
        // A connection a migration keeps in repair mode until it lets the
        // tree go gets its options as it leaves repair mode, after this.
        let repairing = s.tcp.is_some()
            && lpm_sys::net::getsockopt_int(sock.as_fd(), libc::IPPROTO_TCP, libc::TCP_REPAIR)
                .step(p.host, || format!("read fd {fd}'s TCP_REPAIR"))?
                == 1;
        let skip = |o: &&lpm_image::SockOpt| {
            repairing
                || (o.level == libc::SOL_SOCKET && [libc::SO_RCVBUF, libc::SO_SNDBUF].contains(&o.name))
                // SO_INCOMING_CPU: the kernel moves it to the CPU each packet
                // arrives on.
                || (o.level == libc::SOL_SOCKET && o.name == 49)
                || (v6only_moot && o.level == libc::IPPROTO_IPV6 && o.name == libc::IPV6_V6ONLY)
        };
        for o in s.opts.iter().filter(|o| !skip(o)) {
            let mut b = [0u8; 64];
            let found = lpm_sys::net::getsockopt(sock.as_fd(), o.level, o.name, &mut b).map(|n| b[..n].to_vec()).ok();
            f.cmp(&object, &format!("option level {} name {}", o.level, o.name), Some(o.value.clone()), found);
        }
        if s.family == libc::AF_UNIX as u32 {
            unix_queue(p, f, fd, sock.as_fd(), s)?;
        }
    }
    Ok(())
}

/// A unix socket's receive queue: the bytes queued (stream and seqpacket:
/// all of them; datagram: the first message's, as SIOCINQ counts them) and
/// how many descriptors are in flight in it (fdinfo's scm_fds).
fn unix_queue(p: &Restored<'_>, f: &mut Found<'_, '_>, fd: u32, sock: std::os::fd::BorrowedFd, s: &lpm_image::SocketImage) -> Result<()> {
    let object = format!("fd {fd}");
    let info = proc::read(p.host, &format!("fdinfo/{fd}"))?;
    if let Some(n) = info.lines().find_map(|l| l.strip_prefix("scm_fds:")).and_then(|v| v.trim().parse::<usize>().ok()) {
        f.cmp(&object, "descriptors in flight", s.queue_meta.iter().map(|m| m.files.len()).sum::<usize>(), n);
    }
    if s.state == lpm_image::SocketState::Listening as i32 {
        // The accept queue's length, as sock_diag counts it (asked from
        // the socket's network namespace).
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(format!("/proc/{}/fd/{fd}", p.host)).map_err(crate::io_err(format!("stat fd {fd}")))?.ino();
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", p.host)).map_err(crate::io_err("open the network namespace"))?;
        let d = lpm_sys::net::in_netns(std::os::fd::AsFd::as_fd(&ns), || lpm_sys::net::unix_diag(ino as u32))
            .step(p.host, || format!("enter the network namespace of fd {fd}"))?
            .step(p.host, || format!("sock_diag fd {fd}"))?;
        f.cmp(&object, "connections waiting", s.accept_queue.len() as u32, d.map_or(u32::MAX, |d| d.rqueue));
        return Ok(());
    }
    let connected = s.state == lpm_image::SocketState::Connected as i32;
    let dgram = s.sock_type == libc::SOCK_DGRAM as u32;
    if connected || (dgram && s.state != lpm_image::SocketState::Listening as i32) {
        let want = if dgram { s.queue.first().map_or(0, Vec::len) } else { s.queue.iter().map(Vec::len).sum() };
        let found = lpm_sys::net::ioctl_int(sock, lpm_sys::net::SIOCINQ).step(p.host, || format!("SIOCINQ of fd {fd}"))?;
        f.cmp(&object, "bytes queued", want as i64, found as i64);
    }
    Ok(())
}

/// A packet socket: the protocol and interface it is bound to, its fanout
/// group, its memberships (packet_diag, in its network namespace).
fn packet(
    p: &Restored<'_>,
    f: &mut Found<'_, '_>,
    fd: u32,
    object: &str,
    s: &lpm_image::SocketImage,
    sock: std::os::fd::BorrowedFd<'_>,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Some(want) = &s.packet else { return Ok(()) };
    let raw = lpm_sys::net::local_name(sock).step(p.host, || format!("read fd {fd}'s name back"))?;
    let proto = raw.get(2..4).map(|b| u16::from_ne_bytes([b[0], b[1]]) as u32).unwrap_or(0);
    let ifindex = raw.get(4..8).map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()) as u32).unwrap_or(0);
    f.cmp(object, "packet protocol", want.protocol, proto);
    f.cmp(object, "packet interface", want.ifindex, ifindex);
    let fanout = lpm_sys::net::getsockopt_int(sock, 263, 18).step(p.host, || format!("read fd {fd}'s fanout back"))? as u32;
    f.cmp(object, "fanout (id | mode << 16 | flags << 24)", want.fanout, fanout & !(0x20 << 24));
    let ino = std::fs::metadata(format!("/proc/{}/fd/{fd}", p.host)).map_err(crate::io_err(format!("stat fd {fd}")))?.ino();
    let ns = std::fs::File::open(format!("/proc/{}/ns/net", p.host)).map_err(crate::io_err("open the network namespace"))?;
    let diag = lpm_sys::net::in_netns(std::os::fd::AsFd::as_fd(&ns), || lpm_sys::net::packet_diag(ino as u32))
        .step(p.host, || "enter the network namespace".into())?
        .step(p.host, || format!("packet_diag for fd {fd}"))?;
    let mut found: Vec<_> = diag.map(|d| d.mclist).unwrap_or_default().into_iter().map(|(i, c, t, a)| (i, c, t as u32, a)).collect();
    let mut recorded: Vec<_> = want.memberships.iter().map(|m| (m.ifindex, m.count, m.mr_type, m.address.clone())).collect();
    found.sort();
    recorded.sort();
    f.cmp(object, "memberships (ifindex, count, type, address)", recorded, found);
    Ok(())
}

/// The masks over the host's paths in a mount namespace the process owns:
/// the mounts its parent (lpm for the root) does not have that hide a path
/// and hold nothing, compared with the image's in mount order.
fn mount_masks(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    let Some(ns) = p.image.namespaces.as_ref().filter(|n| n.clone_flags & libc::CLONE_NEWNS as u64 != 0) else { return Ok(()) };
    let parent = match host_of(p, p.image.ppid) {
        0 => std::process::id() as i32,
        h => h,
    };
    let theirs: Vec<(String, String)> = proc::mounts(parent)?.into_iter().map(|m| (m.0, m.2)).collect();
    let found: Vec<lpm_image::MountMask> = crate::ns::mountinfo(p.host)?
        .iter()
        .filter(|m| !theirs.contains(&(m.point.clone(), m.fstype.clone())))
        .filter_map(|m| crate::ns::mask_of(p.host, m))
        .collect();
    let show = |v: &[lpm_image::MountMask]| -> Vec<String> {
        v.iter().map(|m| format!("{} {} {:#x} {}", m.path, if m.null_file { "null" } else { "tmpfs" }, m.flags, m.options)).collect()
    };
    f.cmp("mount namespace", "masks", show(&ns.masks), show(&found));
    Ok(())
}

/// The cgroups the tree was restored into.
fn cgroups(p: &Restored<'_>, f: &mut Found<'_, '_>) -> Result<()> {
    if p.cgroups.is_empty() {
        return Ok(());
    }
    let text = proc::read(p.host, "cgroup")?;
    let paths: Vec<&str> = text.lines().filter_map(|l| l.splitn(3, ':').nth(2)).filter(|p| *p != "/").collect();
    for dir in p.cgroups {
        let d = dir.to_string_lossy();
        let inside = paths.iter().any(|c| d.ends_with(c));
        f.cmp("cgroup", &d, true, inside);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(start: u64, end: u64, perms: &str, name: &str, offset: u64) -> Area {
        Area { start, end, perms: perms.into(), name: name.into(), offset }
    }

    #[test]
    fn areas_merge_as_the_kernel_may() {
        let v = vec![
            area(0x3000, 0x4000, "rw-p", "", 0),
            area(0x1000, 0x2000, "r--p", "/bin/x", 0),
            area(0x2000, 0x3000, "r--p", "/bin/x", 0x1000),
            area(0x4000, 0x5000, "rw-p", "", 0),
            area(0x5000, 0x6000, "rw-p", "[heap]", 0),
            // Not contiguous in the file: two areas.
            area(0x6000, 0x7000, "r--p", "/bin/y", 0),
            area(0x7000, 0x8000, "r--p", "/bin/y", 0x5000),
        ];
        assert_eq!(
            merged(v),
            vec![
                area(0x1000, 0x3000, "r--p", "/bin/x", 0),
                area(0x3000, 0x5000, "rw-p", "", 0),
                area(0x5000, 0x6000, "rw-p", "[heap]", 0),
                area(0x6000, 0x7000, "r--p", "/bin/y", 0),
                area(0x7000, 0x8000, "r--p", "/bin/y", 0x5000),
            ]
        );
    }

    #[test]
    fn perms_are_written_as_maps_writes_them() {
        assert_eq!(perms((libc::PROT_READ | libc::PROT_EXEC) as u32, false), "r-xp");
        assert_eq!(perms((libc::PROT_READ | libc::PROT_WRITE) as u32, true), "rw-s");
        assert_eq!(perms(0, false), "---p");
    }
}
