//! SysV IPC inside ipc namespaces the tree owns: shared memory segments
//! (key, id, owner, mode, size, contents), semaphore sets (values) and
//! message queues (messages with their types, in order), plus the
//! namespace's limits; and SysV segments attached in address spaces.
//!
//! Both directions work from a short-lived lpm thread that joins the
//! namespace with setns (ipc membership is per thread): it lists the
//! objects in /proc/sysvipc, reads them without disturbing them (shmat
//! read-only, GETALL, msgrcv with MSG_COPY) and, on restore, recreates them
//! with identical ids by writing /proc/sys/kernel/{shm,sem,msg}_next_id
//! before each creation. Attached segments are then attached again at their
//! addresses by remote shmat in each puppet; segments already marked for
//! removal are removed once every puppet holds them.
//!
//! Refused by name: SysV segments attached from the host's ipc namespace
//! (one the tree does not own), partial attachments, locked segments,
//! shm_rmid_forced namespaces holding segments. POSIX message queue
//! descriptors are files (`files::mqueue`). Not detectable from outside,
//! hence not restored: SEM_UNDO adjustments of the processes.

use std::collections::HashMap;
use std::path::Path;

use lpm_image::{
    IpcNamespace, IpcPerm, IpcSysctl, Namespaces, PageRun, PagesReader, PagesWriter, Process, SysvMsg, SysvMsgQueue, SysvSem, SysvShm,
    SysvShmMap, TreeImage,
};
use lpm_sys::ipc as sys;
use lpm_sys::remote::Remote;

use crate::proc::{self, MapEntry};
use crate::{io_err, EngineError, Result, StepExt, PAGE};

/// Per-namespace settings restored with the objects (the `shm_rmid_forced`
/// switch is refused when it could destroy a segment, see `dump_ns`).
const SYSCTLS: [&str; 12] = [
    "kernel/shmmax",
    "kernel/shmall",
    "kernel/shmmni",
    "kernel/msgmax",
    "kernel/msgmnb",
    "kernel/msgmni",
    "kernel/sem",
    "fs/mqueue/queues_max",
    "fs/mqueue/msg_max",
    "fs/mqueue/msgsize_max",
    "fs/mqueue/msg_default",
    "fs/mqueue/msgsize_default",
];

const SHM_DEST: u32 = 0o1000;
const SHM_LOCKED: u32 = 0o2000;

/// Runs `f` in a thread that joined the ipc namespace of `pid`.
pub(crate) fn in_ns<T: Send>(pid: i32, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let path = format!("/proc/{pid}/ns/ipc");
    let ns = std::fs::File::open(&path).map_err(io_err(format!("open {path}")))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::InterProcessCommunication),
            )
            .map_err(|e| io_err(format!("setns {path}"))(e.into()))?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(EngineError::Incompatible("ipc namespace thread panicked".into())))
    })
}

fn read_sys(name: &str) -> Result<String> {
    let p = format!("/proc/sys/{name}");
    Ok(std::fs::read_to_string(&p).map_err(io_err(format!("read {p}")))?.trim().to_string())
}

fn write_sys(name: &str, value: &str) -> Result<()> {
    let p = format!("/proc/sys/{name}");
    std::fs::write(&p, value).map_err(io_err(format!("write {value:?} to {p}")))
}

/// Rows of a /proc/sysvipc table (the header dropped), as fields.
fn table(kind: &str) -> Result<Vec<Vec<String>>> {
    let p = format!("/proc/sysvipc/{kind}");
    let text = std::fs::read_to_string(&p).map_err(io_err(format!("read {p}")))?;
    Ok(text.lines().skip(1).map(|l| l.split_whitespace().map(String::from).collect()).collect())
}

/// Key, id, owner and mode from a row whose uid and gid are at `uid_col`.
fn perm(row: &[String], uid_col: usize, what: &str) -> Result<IpcPerm> {
    let bad = || EngineError::Parse { what: format!("/proc/sysvipc/{what} row {row:?}") };
    let num = |i: usize| row.get(i).and_then(|v| v.parse::<i64>().ok()).ok_or_else(bad);
    Ok(IpcPerm {
        key: num(0)? as i32,
        id: num(1)? as u32,
        mode: row.get(2).and_then(|v| u32::from_str_radix(v, 8).ok()).ok_or_else(bad)?,
        uid: num(uid_col)? as u32,
        gid: num(uid_col + 1)? as u32,
    })
}

/// The shared memory segments of the ipc namespace the calling thread is
/// in (owner and mode, size), refused when the restore could not
/// keep them: locked in memory, or in a namespace that destroys
/// segments nobody attaches (shm_rmid_forced). `pid` owns the namespace.
fn shm_segments(pid: i32) -> Result<Vec<(IpcPerm, u64)>> {
    let unsupported = |what: String| EngineError::Unsupported { pid, kind: "SysV IPC", what };
    let shm = table("shm")?;
    if !shm.is_empty() && read_sys("kernel/shm_rmid_forced")? != "0" {
        return Err(unsupported("segments in a namespace with kernel.shm_rmid_forced set".into()));
    }
    let mut out = Vec::new();
    for row in shm {
        let perm = perm(&row, 7, "shm")?;
        let size: u64 = row.get(3).and_then(|v| v.parse().ok()).ok_or_else(|| EngineError::Parse { what: format!("shm row {row:?}") })?;
        if perm.mode & SHM_LOCKED != 0 {
            return Err(unsupported(format!("shared memory segment {} is locked in memory (SHM_LOCK)", perm.id)));
        }
        out.push((perm, size));
    }
    Ok(out)
}

/// Applies the dump's rules to the ipc namespace `pid` owns (nothing is
/// read out of the objects): a no-op for a process that owns none.
pub fn check_ns(pid: i32, ns: &Namespaces) -> Result<()> {
    if ns.clone_flags & libc::CLONE_NEWIPC as u64 == 0 {
        return Ok(());
    }
    in_ns(pid, || shm_segments(pid)).map(drop)
}

/// Records the contents of the ipc namespace `pid` owns into `ns` (a no-op
/// for a process that owns no ipc namespace). Pages of segments that
/// `precopied` names (by id: a segment's inode number is its id) are
/// recorded as precopied runs, not read.
pub fn dump_ns(pid: i32, ns: &mut Namespaces, dir: &Path, precopied: &HashMap<crate::ShmRef, crate::PrecopiedShm>) -> Result<()> {
    if ns.clone_flags & libc::CLONE_NEWIPC as u64 == 0 {
        return Ok(());
    }
    let ipc = in_ns(pid, || {
        let mut ipc = IpcNamespace::default();
        for name in SYSCTLS {
            ipc.sysctls.push(IpcSysctl { name: name.into(), value: read_sys(name)? });
        }
        let step = |what: String| move |source| EngineError::Step { pid, step: what, source };
        for (perm, size) in shm_segments(pid)? {
            let len = size.div_ceil(PAGE) * PAGE;
            let seg =
                sys::shm_attach(perm.id as i32, len as usize, true).map_err(step(format!("read shared memory segment {}", perm.id)))?;
            let name = format!("sysvshm-{pid}-{}.img", perm.id);
            let mut w = PagesWriter::create(dir, &name)?;
            let mut pages = Vec::new();
            let data = seg.as_slice();
            let held = precopied.get(&crate::ShmRef { sysv: true, inode: perm.id as u64 });
            // A held page is not touched: the receiver has it (or holds zero
            // where the segment had nothing).
            let is_held = |i: usize| {
                held.is_some_and(|h| {
                    let k = h.ranges.partition_point(|r| r.1 <= i as u64);
                    k < h.ranges.len() && h.ranges[k].0 <= i as u64
                })
            };
            let mut at = 0usize;
            while at < data.len() {
                if is_held(at) {
                    let mut end = at + PAGE as usize;
                    while end < data.len() && is_held(end) {
                        end += PAGE as usize;
                    }
                    pages.push(PageRun {
                        vaddr: at as u64,
                        npages: ((end - at) / PAGE as usize) as u64,
                        precopied: true,
                        ..Default::default()
                    });
                    at = end;
                    continue;
                }
                let zero = |i: usize| lpm_sys::misc::is_zero(&data[i..i + PAGE as usize]);
                if zero(at) {
                    at += PAGE as usize;
                    continue;
                }
                let mut end = at + PAGE as usize;
                while end < data.len() && !zero(end) && !is_held(end) {
                    end += PAGE as usize;
                }
                pages.push(w.append(at as u64, &data[at..end])?);
                at = end;
            }
            w.finish()?;
            let precopy_file = match held {
                Some(h) if pages.iter().any(|r| r.precopied) => h.file.clone(),
                _ => String::new(),
            };
            ipc.shm.push(SysvShm { perm: Some(perm), size, pages, pages_file: name, precopy_file });
        }
        for row in table("sem")? {
            let perm = perm(&row, 4, "sem")?;
            let n: usize =
                row.get(3).and_then(|v| v.parse().ok()).ok_or_else(|| EngineError::Parse { what: format!("sem row {row:?}") })?;
            let values = sys::sem_getall(perm.id as i32, n).map_err(step(format!("read semaphore set {}", perm.id)))?;
            ipc.sem.push(SysvSem { perm: Some(perm), values: values.into_iter().map(u32::from).collect() });
        }
        let msgmax: usize = read_sys("kernel/msgmax")?.parse().unwrap_or(65536);
        for row in table("msg")? {
            let perm = perm(&row, 7, "msg")?;
            let id = perm.id as i32;
            let qbytes = sys::msg_qbytes(id).map_err(step(format!("stat message queue {id}")))?;
            let mut messages = Vec::new();
            while let Some((mtype, data)) =
                sys::msg_copy(id, messages.len() as i64, msgmax).map_err(step(format!("copy message of queue {id}")))?
            {
                messages.push(SysvMsg { mtype, data });
            }
            ipc.msg.push(SysvMsgQueue { perm: Some(perm), qbytes, messages });
        }
        Ok(ipc)
    })?;
    ns.ipc = Some(ipc);
    Ok(())
}

/// A SysV shared memory attachment, as /proc/PID/maps names it.
pub fn is_sysv_shm(e: &MapEntry) -> bool {
    e.path.starts_with("/SYSV")
}

/// The SysV segments attached in stopped process `pid`; refuses those of
/// an ipc namespace the tree does not own and partial attachments.
pub fn dump_maps(pid: i32, maps: &[MapEntry]) -> Result<Vec<SysvShmMap>> {
    let mut out = Vec::new();
    for e in maps.iter().filter(|e| is_sysv_shm(e)) {
        let unsupported = |why: &str| EngineError::Unsupported {
            pid,
            kind: "memory area",
            what: format!("{:#x}-{:#x} {} {:?}: SysV shared memory segment {}: {why}", e.start, e.end, e.perms, e.path, e.inode),
        };
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", e.start, e.end);
        let fs = rustix::fs::statfs(path.as_str()).map_err(|err| io_err(format!("statfs {path}"))(err.into()))?;
        if fs.f_type as u64 == crate::hugetlb::HUGETLBFS_MAGIC || e.has("ht") {
            return Err(unsupported(crate::hugetlb::refused(e).unwrap_or("on hugetlbfs (SHM_HUGETLB)")));
        }
        if proc::link(pid, "ns/ipc")? == proc::link(std::process::id() as i32, "ns/ipc")? {
            return Err(unsupported("in the host's ipc namespace, which the tree does not own"));
        }
        let size = std::fs::metadata(&path).map_err(io_err(format!("stat {path}")))?.len();
        if e.offset != 0 || e.end - e.start != size.div_ceil(PAGE) * PAGE {
            return Err(unsupported("attached only in part (unmapped or split by mprotect)"));
        }
        out.push(SysvShmMap { start: e.start, end: e.end, shmid: e.inode as u32, prot: e.prot() });
    }
    Ok(out)
}

/// Segments to remove once every puppet has attached them.
pub struct Pending {
    removals: Vec<(i32, Vec<u32>)>,
}

/// Recreates the objects of every ipc namespace of the image, inside the
/// puppets that own them (`host` maps an image pid to its puppet), before
/// any process is shaped (shaping attaches segments).
pub fn restore(tree: &TreeImage, dir: &Path, host: impl Fn(u32) -> i32) -> Result<Pending> {
    let mut removals = Vec::new();
    for p in &tree.processes {
        let Some(ipc) = p.namespaces.as_ref().and_then(|n| n.ipc.as_ref()) else { continue };
        let pid = host(p.pid);
        let removed = in_ns(pid, || restore_ns(p, ipc, dir))?;
        removals.push((pid, removed));
    }
    Ok(Pending { removals })
}

fn restore_ns(p: &Process, ipc: &IpcNamespace, dir: &Path) -> Result<Vec<u32>> {
    let step = |what: String| move |source| EngineError::Step { pid: p.pid as i32, step: what, source };
    for s in &ipc.sysctls {
        write_sys(&s.name, &s.value)?;
    }
    let missing = |what: &str| EngineError::Incompatible(format!("pid {}: a SysV {what} without key and id", p.pid));
    let check = |what: &str, want: u32, got: i32| {
        if got as u32 == want {
            Ok(())
        } else {
            Err(EngineError::Incompatible(format!("pid {}: SysV {what} {want} came back with id {got}", p.pid)))
        }
    };
    let mut removed = Vec::new();
    let mut buf = Vec::new();
    for s in &ipc.shm {
        let perm = s.perm.as_ref().ok_or_else(|| missing("segment"))?;
        write_sys("kernel/shm_next_id", &perm.id.to_string())?;
        let id = sys::shm_create(perm.key, s.size, perm.mode).map_err(step(format!("create shared memory segment {}", perm.id)))?;
        check("shared memory segment", perm.id, id)?;
        let len = s.size.div_ceil(PAGE) * PAGE;
        let mut seg = sys::shm_attach(id, len as usize, false).map_err(step(format!("attach shared memory segment {id}")))?;
        let r = PagesReader::open(dir, &s.pages_file)?;
        for run in s.pages.iter().filter(|r| !r.zero && !r.precopied) {
            r.read_run(run, &mut buf)?;
            let at = run.vaddr as usize;
            seg.as_mut_slice()
                .get_mut(at..at + buf.len())
                .ok_or_else(|| EngineError::Incompatible(format!("shared memory segment {id}: pages at {at:#x} beyond its size")))?
                .copy_from_slice(&buf);
        }
        let what = format!("shared memory segment {id}");
        if let Some(f) = crate::mem::open_object_precopy(dir, &s.precopy_file, &s.pages, &what)? {
            crate::mem::fill_precopied(&f, &s.pages, seg.as_mut_slice(), &what)?;
        }
        drop(seg);
        sys::shm_set(id, perm.uid, perm.gid, perm.mode).map_err(step(format!("set owner of shared memory segment {id}")))?;
        if perm.mode & SHM_DEST != 0 {
            removed.push(perm.id);
        }
    }
    for s in &ipc.sem {
        let perm = s.perm.as_ref().ok_or_else(|| missing("semaphore set"))?;
        write_sys("kernel/sem_next_id", &perm.id.to_string())?;
        let id = sys::sem_create(perm.key, s.values.len() as i32, perm.mode).map_err(step(format!("create semaphore set {}", perm.id)))?;
        check("semaphore set", perm.id, id)?;
        let values: Vec<u16> = s.values.iter().map(|&v| v as u16).collect();
        sys::sem_setall(id, &values).map_err(step(format!("set semaphore values of set {id}")))?;
        sys::sem_set(id, perm.uid, perm.gid, perm.mode).map_err(step(format!("set owner of semaphore set {id}")))?;
    }
    for q in &ipc.msg {
        let perm = q.perm.as_ref().ok_or_else(|| missing("message queue"))?;
        write_sys("kernel/msg_next_id", &perm.id.to_string())?;
        let id = sys::msg_create(perm.key, perm.mode).map_err(step(format!("create message queue {}", perm.id)))?;
        check("message queue", perm.id, id)?;
        // Capacity first: the messages must fit.
        sys::msg_set(id, 0, 0, 0o600, q.qbytes).map_err(step(format!("set capacity of message queue {id}")))?;
        for (i, m) in q.messages.iter().enumerate() {
            sys::msg_send(id, m.mtype, &m.data).map_err(step(format!("send message {i} to queue {id}")))?;
        }
        sys::msg_set(id, perm.uid, perm.gid, perm.mode, q.qbytes).map_err(step(format!("set owner of message queue {id}")))?;
    }
    Ok(removed)
}

impl Pending {
    /// Removes the segments that were marked for removal at checkpoint,
    /// now that the puppets hold their attachments.
    pub fn finish(self) -> Result<()> {
        for (pid, ids) in self.removals.into_iter().filter(|(_, ids)| !ids.is_empty()) {
            in_ns(pid, || {
                for id in ids {
                    sys::shm_remove(id as i32).step(pid, || format!("remove shared memory segment {id}"))?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// Attaches the SysV segments of `p` at their addresses in its puppet,
/// once its address space is in place.
pub fn attach(pid: i32, r: &mut Remote, p: &Process) -> Result<()> {
    const SHM_EXEC: u64 = 0o100000;
    for m in &p.sysv_shm_maps {
        let mut flags = 0;
        if m.prot & libc::PROT_WRITE as u32 == 0 {
            flags |= libc::SHM_RDONLY as u64;
        }
        if m.prot & libc::PROT_EXEC as u32 != 0 {
            flags |= SHM_EXEC;
        }
        let what = || format!("remote shmat of segment {} at {:#x}", m.shmid, m.start);
        let at = r.call(libc::SYS_shmat, &[m.shmid as u64, m.start, flags]).step(pid, what)?;
        if at != m.start {
            return Err(EngineError::Incompatible(format!("pid {}: segment {} attached at {at:#x}, not {:#x}", p.pid, m.shmid, m.start)));
        }
        let given = libc::PROT_READ as u32 | (m.prot & (libc::PROT_WRITE | libc::PROT_EXEC) as u32);
        if m.prot != given {
            r.call(libc::SYS_mprotect, &[m.start, m.end - m.start, m.prot as u64])
                .step(pid, || format!("remote mprotect of segment {} at {:#x}", m.shmid, m.start))?;
        }
    }
    Ok(())
}

/// Address ranges the SysV attachments of the image occupy.
pub fn reserved(tree: &TreeImage) -> impl Iterator<Item = (u64, u64)> + '_ {
    tree.processes.iter().flat_map(|p| p.sysv_shm_maps.iter().map(|m| (m.start, m.end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sysvipc_rows() {
        let row: Vec<String> = "1234 32769 1600 4096 10 11 1 1000 1001 0 0 0 0 0 4096 0".split(' ').map(String::from).collect();
        let p = perm(&row, 7, "shm").expect("parses");
        assert_eq!(p, IpcPerm { key: 1234, id: 32769, mode: 0o1600, uid: 1000, gid: 1001 });
        let row: Vec<String> = "-5 3 666 4 0 0 0 0 0 0".split(' ').map(String::from).collect();
        assert_eq!(perm(&row, 4, "sem").expect("parses").key, -5);
        assert!(perm(&["x".to_string()], 4, "sem").is_err());
    }
}
