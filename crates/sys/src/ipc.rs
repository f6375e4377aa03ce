//! SysV IPC in the calling thread's ipc namespace: reading segments,
//! semaphore sets and message queues without disturbing them (shmat
//! read-only, GETALL, msgrcv with MSG_COPY) and recreating them. The engine
//! runs these from a short-lived thread that joined the namespace with
//! setns.

use std::io;

use crate::{cvt, Error, Result};

/// msgrcv flag: copy the message at an index instead of receiving it
/// (CONFIG_CHECKPOINT_RESTORE).
const MSG_COPY: i32 = 0o40000;

/// A segment attached in this process; detached on drop.
pub struct ShmAttach {
    addr: *mut libc::c_void,
    len: usize,
}

impl ShmAttach {
    /// The segment's bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: addr..addr+len is the attached segment, mapped for as
        // long as self lives; other writers only change bytes, which is
        // acceptable for a byte slice read as a snapshot.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }

    /// The segment's bytes, writable (attached without SHM_RDONLY).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in as_slice; the segment was attached read-write and
        // &mut self keeps this the only slice we hand out.
        unsafe { std::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }
}

impl Drop for ShmAttach {
    fn drop(&mut self) {
        // SAFETY: addr came from shmat and no slice outlives self.
        unsafe { libc::shmdt(self.addr) };
    }
}

/// Attaches segment `id` of `size` bytes anywhere in this process.
pub fn shm_attach(id: i32, size: usize, readonly: bool) -> Result<ShmAttach> {
    let flags = if readonly { libc::SHM_RDONLY } else { 0 };
    // SAFETY: a NULL address lets the kernel choose a free range; nothing
    // of ours is replaced.
    let addr = unsafe { libc::shmat(id, std::ptr::null(), flags) };
    if addr as isize == -1 {
        return Err(Error::sys("shmat", 0, io::Error::last_os_error()));
    }
    Ok(ShmAttach { addr, len: size })
}

/// Creates a segment with IPC_CREAT|IPC_EXCL; returns its id.
pub fn shm_create(key: i32, size: u64, mode: u32) -> Result<i32> {
    // SAFETY: shmget takes plain integers.
    cvt(unsafe { libc::shmget(key, size as usize, libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32) })
        .map_err(|e| Error::sys("shmget", 0, e))
}

/// Sets owner and permission bits of a segment (IPC_SET).
pub fn shm_set(id: i32, uid: u32, gid: u32, mode: u32) -> Result<()> {
    // SAFETY: shmid_ds is plain data; zeroed is a valid value.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes only into ds.
    cvt(unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) }).map_err(|e| Error::sys("shmctl IPC_STAT", 0, e))?;
    ds.shm_perm.uid = uid;
    ds.shm_perm.gid = gid;
    ds.shm_perm.mode = (mode & 0o777) as _;
    // SAFETY: IPC_SET reads ds.
    cvt(unsafe { libc::shmctl(id, libc::IPC_SET, &mut ds) }).map_err(|e| Error::sys("shmctl IPC_SET", 0, e))?;
    Ok(())
}

/// Marks a segment for removal (IPC_RMID).
pub fn shm_remove(id: i32) -> Result<()> {
    // SAFETY: IPC_RMID ignores the buffer.
    cvt(unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) }).map_err(|e| Error::sys("shmctl IPC_RMID", 0, e))?;
    Ok(())
}

/// Values of the `n` semaphores of set `id` (GETALL).
pub fn sem_getall(id: i32, n: usize) -> Result<Vec<u16>> {
    let mut v = vec![0u16; n];
    // SAFETY: GETALL writes nsems shorts into the array, which holds n,
    // the set's size as /proc/sysvipc/sem reported it.
    cvt(unsafe { libc::semctl(id, 0, libc::GETALL, v.as_mut_ptr()) }).map_err(|e| Error::sys("semctl GETALL", 0, e))?;
    Ok(v)
}

/// Creates a semaphore set with IPC_CREAT|IPC_EXCL; returns its id.
pub fn sem_create(key: i32, nsems: i32, mode: u32) -> Result<i32> {
    // SAFETY: semget takes plain integers.
    cvt(unsafe { libc::semget(key, nsems, libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32) })
        .map_err(|e| Error::sys("semget", 0, e))
}

/// Sets every semaphore of set `id` (SETALL); `v` has one value each.
pub fn sem_setall(id: i32, v: &[u16]) -> Result<()> {
    // SAFETY: SETALL reads nsems shorts; the caller passes one per
    // semaphore of the set it just created.
    cvt(unsafe { libc::semctl(id, 0, libc::SETALL, v.as_ptr()) }).map_err(|e| Error::sys("semctl SETALL", 0, e))?;
    Ok(())
}

/// Sets owner and permission bits of a semaphore set (IPC_SET).
pub fn sem_set(id: i32, uid: u32, gid: u32, mode: u32) -> Result<()> {
    // SAFETY: semid_ds is plain data; zeroed is a valid value.
    let mut ds: libc::semid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes only into ds.
    cvt(unsafe { libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) }).map_err(|e| Error::sys("semctl IPC_STAT", 0, e))?;
    ds.sem_perm.uid = uid;
    ds.sem_perm.gid = gid;
    ds.sem_perm.mode = (mode & 0o777) as _;
    // SAFETY: IPC_SET reads ds.
    cvt(unsafe { libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) }).map_err(|e| Error::sys("semctl IPC_SET", 0, e))?;
    Ok(())
}

/// Capacity of message queue `id` (msg_qbytes).
pub fn msg_qbytes(id: i32) -> Result<u64> {
    // SAFETY: msqid_ds is plain data; zeroed is a valid value.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes only into ds.
    cvt(unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) }).map_err(|e| Error::sys("msgctl IPC_STAT", 0, e))?;
    Ok(ds.msg_qbytes as u64)
}

/// Copies the message at `index` of queue `id` without removing it
/// (msgrcv with MSG_COPY); None past the last one. `max` bounds its size.
pub fn msg_copy(id: i32, index: i64, max: usize) -> Result<Option<(i64, Vec<u8>)>> {
    let mut buf = vec![0u8; 8 + max];
    // SAFETY: buf holds a long mtype and max bytes of text, as msgsz says.
    let n = unsafe { libc::msgrcv(id, buf.as_mut_ptr() as *mut libc::c_void, max, index, MSG_COPY | libc::IPC_NOWAIT | libc::MSG_NOERROR) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOMSG) {
            return Ok(None);
        }
        return Err(Error::sys("msgrcv MSG_COPY", 0, e));
    }
    let mtype = i64::from_ne_bytes(buf[..8].try_into().expect("8 bytes"));
    Ok(Some((mtype, buf[8..8 + n as usize].to_vec())))
}

/// Creates a message queue with IPC_CREAT|IPC_EXCL; returns its id.
pub fn msg_create(key: i32, mode: u32) -> Result<i32> {
    // SAFETY: msgget takes plain integers.
    cvt(unsafe { libc::msgget(key, libc::IPC_CREAT | libc::IPC_EXCL | (mode & 0o777) as i32) }).map_err(|e| Error::sys("msgget", 0, e))
}

/// Appends a message to queue `id` without waiting.
pub fn msg_send(id: i32, mtype: i64, data: &[u8]) -> Result<()> {
    let mut buf = mtype.to_ne_bytes().to_vec();
    buf.extend_from_slice(data);
    // SAFETY: buf holds a long mtype followed by data.len() bytes.
    cvt(unsafe { libc::msgsnd(id, buf.as_ptr() as *const libc::c_void, data.len(), libc::IPC_NOWAIT) })
        .map_err(|e| Error::sys("msgsnd", 0, e))?;
    Ok(())
}

/// Sets owner, permission bits and capacity of a queue (IPC_SET).
pub fn msg_set(id: i32, uid: u32, gid: u32, mode: u32, qbytes: u64) -> Result<()> {
    // SAFETY: msqid_ds is plain data; zeroed is a valid value.
    let mut ds: libc::msqid_ds = unsafe { std::mem::zeroed() };
    // SAFETY: IPC_STAT writes only into ds.
    cvt(unsafe { libc::msgctl(id, libc::IPC_STAT, &mut ds) }).map_err(|e| Error::sys("msgctl IPC_STAT", 0, e))?;
    ds.msg_perm.uid = uid;
    ds.msg_perm.gid = gid;
    ds.msg_perm.mode = (mode & 0o777) as _;
    ds.msg_qbytes = qbytes as _;
    // SAFETY: IPC_SET reads ds.
    cvt(unsafe { libc::msgctl(id, libc::IPC_SET, &mut ds) }).map_err(|e| Error::sys("msgctl IPC_SET", 0, e))?;
    Ok(())
}

/// Attributes of a POSIX message queue: flags, capacity, message size
/// and messages queued (mq_getattr).
pub fn mq_getattr(fd: std::os::fd::BorrowedFd) -> Result<libc::mq_attr> {
    use std::os::fd::AsRawFd;
    // SAFETY: mq_attr is plain data; zeroed is a valid value.
    let mut a: libc::mq_attr = unsafe { std::mem::zeroed() };
    // SAFETY: a NULL new attribute only reads; the kernel writes into a.
    cvt(unsafe { libc::syscall(libc::SYS_mq_getsetattr, fd.as_raw_fd(), std::ptr::null::<libc::mq_attr>(), &mut a) })
        .map_err(|e| Error::sys("mq_getsetattr", 0, e))?;
    Ok(a)
}

/// Opens (or with O_CREAT creates, with `attr` as maxmsg and msgsize)
/// queue `name` ("/NAME") in the calling thread's ipc namespace. The
/// kernel makes the descriptor close-on-exec whatever `flags` say.
pub fn mq_open(name: &str, flags: i32, mode: u32, attr: Option<(i64, i64)>) -> Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(name.trim_start_matches('/'))
        .map_err(|_| Error::sys("mq_open", 0, io::Error::from_raw_os_error(libc::EINVAL)))?;
    // SAFETY: mq_attr is plain data; zeroed is a valid value.
    let mut a: libc::mq_attr = unsafe { std::mem::zeroed() };
    let ap = match attr {
        Some((max, size)) => {
            a.mq_maxmsg = max as _;
            a.mq_msgsize = size as _;
            &a as *const libc::mq_attr
        }
        None => std::ptr::null(),
    };
    // SAFETY: c is a NUL-terminated name and ap NULL or a valid mq_attr,
    // both alive for the call.
    let fd = cvt(unsafe { libc::syscall(libc::SYS_mq_open, c.as_ptr(), flags, mode, ap) }).map_err(|e| Error::sys("mq_open", 0, e))?;
    // SAFETY: mq_open returned a new descriptor that nothing else owns.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Takes the next message (highest priority, oldest first) of the queue
/// without waiting: None when it is empty. `msgsize` is the queue's.
pub fn mq_receive_now(fd: std::os::fd::BorrowedFd, msgsize: usize) -> Result<Option<(u32, Vec<u8>)>> {
    use std::os::fd::AsRawFd;
    let mut buf = vec![0u8; msgsize.max(1)];
    let mut prio: libc::c_uint = 0;
    let past = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: buf holds msgsize bytes as the length says; prio and past are
    // valid for the call. An absolute timeout in the past never waits.
    let n = unsafe { libc::syscall(libc::SYS_mq_timedreceive, fd.as_raw_fd(), buf.as_mut_ptr(), buf.len(), &mut prio, &past) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::ETIMEDOUT)) {
            return Ok(None);
        }
        return Err(Error::sys("mq_timedreceive", 0, e));
    }
    buf.truncate(n as usize);
    Ok(Some((prio, buf)))
}

/// Appends a message with priority `prio` to the queue without waiting.
pub fn mq_send_now(fd: std::os::fd::BorrowedFd, prio: u32, data: &[u8]) -> Result<()> {
    use std::os::fd::AsRawFd;
    let past = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: data is valid for its length; past is valid for the call.
    cvt(unsafe { libc::syscall(libc::SYS_mq_timedsend, fd.as_raw_fd(), data.as_ptr(), data.len(), prio, &past) })
        .map_err(|e| Error::sys("mq_timedsend", 0, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Round trip in this process's namespace with private objects.
    #[test]
    fn private_objects_round_trip() {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "the sys tests run as root");
        let q = msg_create(libc::IPC_PRIVATE, 0o600).expect("msgget");
        msg_send(q, 7, b"hello").expect("msgsnd");
        msg_send(q, 3, b"").expect("msgsnd");
        assert_eq!(msg_copy(q, 0, 64).expect("copy"), Some((7, b"hello".to_vec())));
        assert_eq!(msg_copy(q, 1, 64).expect("copy"), Some((3, vec![])));
        assert_eq!(msg_copy(q, 2, 64).expect("copy"), None);
        // SAFETY: IPC_RMID ignores the buffer.
        unsafe { libc::msgctl(q, libc::IPC_RMID, std::ptr::null_mut()) };
        let s = sem_create(libc::IPC_PRIVATE, 3, 0o600).expect("semget");
        sem_setall(s, &[1, 2, 3]).expect("setall");
        assert_eq!(sem_getall(s, 3).expect("getall"), vec![1, 2, 3]);
        // SAFETY: IPC_RMID takes no buffer.
        unsafe { libc::semctl(s, 0, libc::IPC_RMID) };
        let m = shm_create(libc::IPC_PRIVATE, 8192, 0o600).expect("shmget");
        shm_attach(m, 8192, false).expect("shmat").as_mut_slice()[100] = 42;
        assert_eq!(shm_attach(m, 8192, true).expect("shmat").as_slice()[100], 42);
        shm_remove(m).expect("rmid");
    }

    /// A POSIX queue drained and refilled in order, with priorities.
    #[test]
    fn mqueue_round_trip() {
        let name = format!("/lpm-sys-test-{}", std::process::id());
        let q = mq_open(&name, libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NONBLOCK, 0o600, Some((4, 16))).expect("mq_open");
        let c = std::ffi::CString::new(name.as_str()).expect("name");
        // SAFETY: c is a NUL-terminated name; the open fd keeps the queue.
        assert_eq!(unsafe { libc::mq_unlink(c.as_ptr()) }, 0, "mq_unlink {name}");
        let fd = std::os::fd::AsFd::as_fd(&q);
        mq_send_now(fd, 1, b"low").expect("send");
        mq_send_now(fd, 9, b"high").expect("send");
        mq_send_now(fd, 1, b"").expect("send");
        let a = mq_getattr(fd).expect("getattr");
        assert_eq!((a.mq_maxmsg, a.mq_msgsize, a.mq_curmsgs), (4, 16, 3));
        assert_eq!(mq_receive_now(fd, 16).expect("receive"), Some((9, b"high".to_vec())));
        assert_eq!(mq_receive_now(fd, 16).expect("receive"), Some((1, b"low".to_vec())));
        assert_eq!(mq_receive_now(fd, 16).expect("receive"), Some((1, vec![])));
        assert_eq!(mq_receive_now(fd, 16).expect("receive"), None);
    }
}
