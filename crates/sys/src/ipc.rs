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
}
