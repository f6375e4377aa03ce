//! What a dump that leaves the tree frozen (`After::Frozen`) hands over,
//! on the real kernel (run as root): the tree's flock, POSIX and OFD locks
//! are free and its FIFO empty while it is frozen (a target could take
//! them), and `thaw_tree` with the dump's `Handoff` gives every lock and
//! every byte back before the tree runs again: also when another owner
//! still holds a lock for a moment, and when a copy sharing the FIFO's
//! buffer refilled it already. A lock that stays taken elsewhere is
//! named in the error, and the tree runs anyway.
//!
//! Every check is made from outside, by this test process: flock with
//! LOCK_NB and F_GETLK / F_OFD_GETLK on descriptions of its own, and
//! tee(2) for the FIFO's bytes, which reads them without consuming them.

mod common;
use common::wait_for;

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lpm_engine::{After, DumpOptions, HandbackError};
use nix::fcntl::{fcntl, FcntlArg};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// Takes an exclusive flock on a.dat, a POSIX write lock on bytes 0-99
/// of b.dat, an OFD read lock on bytes 50-59 of c.dat, writes 5120 bytes
/// into a FIFO it holds open read-write, then counts into `log`.
const HOLDER: &str = r#"
import fcntl, os, struct, sys, time
d = sys.argv[1]
a = os.open(d + "/a.dat", os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(a, fcntl.LOCK_EX | fcntl.LOCK_NB)
b = os.open(d + "/b.dat", os.O_RDWR | os.O_CREAT, 0o644)
fcntl.lockf(b, fcntl.LOCK_EX | fcntl.LOCK_NB, 100, 0)
c = os.open(d + "/c.dat", os.O_RDWR | os.O_CREAT, 0o644)
fcntl.fcntl(c, fcntl.F_OFD_SETLK, struct.pack("hhqqi4x", fcntl.F_RDLCK, 0, 50, 10, 0))
os.mkfifo(d + "/fifo")
f = os.open(d + "/fifo", os.O_RDWR)
os.write(f, bytes(range(256)) * 20)
open(d + "/ready", "w").write("ok")
n = 0
while True:
    n += 1
    with open(d + "/log", "a") as l:
        l.write(f"{n}\n")
    time.sleep(0.005)
"#;

fn fifo_data() -> Vec<u8> {
    (0..=255u8).collect::<Vec<u8>>().repeat(20)
}

/// The test's directory, cgroup and process; all removed on drop.
struct Scene {
    dir: PathBuf,
    cg: PathBuf,
    pid: Option<i32>,
}

impl Scene {
    fn new() -> Scene {
        let name = format!("lpm-handoff-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let (cg, dir) = common::cgroup_and_dir(&name);
        Scene { dir, cg, pid: None }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Starts the holder alone in the cgroup; returns its pid once it
    /// holds everything.
    fn start(&mut self) -> i32 {
        let pid = self.spawn(HOLDER);
        wait_for("the holder to take its locks", 20, || self.path("ready").exists());
        wait_for("the holder to count", 5, || self.count() >= 2);
        pid
    }

    /// Starts Python program `src` alone in the cgroup, given the
    /// directory as its argument.
    fn spawn(&mut self, src: &str) -> i32 {
        let prog = self.path("prog.py");
        fs::write(&prog, src).unwrap();
        let cmd = format!("echo $$ > {}/cgroup.procs; exec python3 {} {}", self.cg.display(), prog.display(), self.dir.display());
        // Reaped by pid in Drop.
        #[allow(clippy::zombie_processes)]
        let child = Command::new("sh").args(["-c", &cmd]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let pid = child.id() as i32;
        self.pid = Some(pid);
        pid
    }

    fn count(&self) -> usize {
        fs::read_to_string(self.path("log")).map(|s| s.lines().count()).unwrap_or(0)
    }

    fn frozen(&self) -> bool {
        fs::read_to_string(self.cg.join("cgroup.events")).unwrap().lines().any(|l| l == "frozen 1")
    }

    /// A description of `name` of our own.
    fn open(&self, name: &str) -> OwnedFd {
        fs::OpenOptions::new().read(true).write(true).open(self.path(name)).unwrap().into()
    }

    /// The FIFO's bytes, read with tee from an end of our own: nothing is
    /// consumed.
    fn fifo_bytes(&self) -> Vec<u8> {
        let end: OwnedFd = fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(self.path("fifo")).unwrap().into();
        let (mut rd, wr) = std::io::pipe().unwrap();
        lpm_sys::misc::set_pipe_size(wr.as_raw_fd(), 1 << 20).unwrap();
        lpm_sys::misc::tee(end.as_raw_fd(), wr.as_raw_fd(), 1 << 20).unwrap();
        drop(wr);
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut rd, &mut out).unwrap();
        out
    }

    /// Whether each lock the holder had is free for us to take: the flock
    /// on a.dat, its POSIX range on b.dat, its OFD range on c.dat.
    fn locks_free(&self) -> [bool; 3] {
        let a = self.open("a.dat");
        let flock_free = match rustix::fs::flock(&a, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => true,
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => false,
            Err(e) => panic!("flock a.dat: {e}"),
        };
        drop(a);
        let posix = getlk(&self.open("b.dat"), false, libc::F_WRLCK, 0, 100);
        let ofd = getlk(&self.open("c.dat"), true, libc::F_WRLCK, 50, 10);
        [flock_free, posix.is_none(), ofd.is_none()]
    }

    /// Every lock is held as the holder took it.
    fn assert_held(&self, pid: i32) {
        let a = self.open("a.dat");
        let e = rustix::fs::flock(&a, rustix::fs::FlockOperation::NonBlockingLockShared).expect_err("a.dat is not flocked");
        assert_eq!(e, rustix::io::Errno::WOULDBLOCK);
        assert_eq!(getlk(&self.open("b.dat"), false, libc::F_RDLCK, 0, 1), Some((libc::F_WRLCK, 0, 100, pid)), "POSIX lock on b.dat");
        assert_eq!(getlk(&self.open("b.dat"), false, libc::F_WRLCK, 100, 100), None, "POSIX lock beyond byte 99 of b.dat");
        assert_eq!(getlk(&self.open("c.dat"), true, libc::F_WRLCK, 0, 0), Some((libc::F_RDLCK, 50, 10, -1)), "OFD lock on c.dat");
        assert_eq!(getlk(&self.open("c.dat"), true, libc::F_RDLCK, 0, 0), None, "a read lock conflicts with the OFD read lock");
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        if let Ok(procs) = fs::read_to_string(self.cg.join("cgroup.procs")) {
            for p in procs.lines().filter_map(|l| l.parse::<i32>().ok()) {
                lpm_sys::misc::kill(p, libc::SIGKILL);
            }
        }
        let _ = fs::write(self.cg.join("cgroup.freeze"), "0");
        let deadline = Instant::now() + Duration::from_secs(5);
        common::kill_and_reap(self.pid.as_slice(), deadline);
        while fs::remove_dir(&self.cg).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// F_GETLK (or F_OFD_GETLK) for a lock of type `ty` on `start`+`len`:
/// the conflicting lock as (type, start, len, pid), or None.
fn getlk(fd: &OwnedFd, ofd: bool, ty: i32, start: i64, len: i64) -> Option<(i32, i64, i64, i32)> {
    let mut fl = libc::flock { l_type: ty as i16, l_whence: libc::SEEK_SET as i16, l_start: start, l_len: len, l_pid: 0 };
    let arg = if ofd { FcntlArg::F_OFD_GETLK(&mut fl) } else { FcntlArg::F_GETLK(&mut fl) };
    fcntl(fd, arg).expect("F_GETLK");
    (fl.l_type as i32 != libc::F_UNLCK).then_some((fl.l_type as i32, fl.l_start, fl.l_len, fl.l_pid))
}

/// A frozen dump lets go of every lock and empties the FIFO; the thaw
/// gives all back, waiting out a lock held elsewhere for a moment and
/// adding nothing to a FIFO refilled already by a copy sharing it.
#[test]
fn frozen_dump_hands_over_locks_and_fifo_and_thaw_takes_them_back() {
    let mut s = Scene::new();
    let pid = s.start();
    s.assert_held(pid);
    assert_eq!(s.locks_free(), [false; 3]);
    assert_eq!(s.fifo_bytes(), fifo_data());

    let opts = DumpOptions { after: After::Frozen, ..Default::default() };
    let t = Instant::now();
    let st = lpm_engine::checkpoint_with(pid, &s.path("img1"), &opts).expect("checkpoint leaving the tree frozen");
    eprintln!("frozen dump: {:.1} ms, {:?}", t.elapsed().as_secs_f64() * 1e3, st.handoff);
    assert!(s.frozen());
    assert_eq!(st.handoff.locks(), 3, "{:?}", st.handoff);
    assert_eq!(st.handoff.fifos(), (1, fifo_data().len()));
    // Free for a target to take, and the FIFO empty: its bytes are in the
    // image only.
    assert_eq!(s.locks_free(), [true; 3], "the frozen tree still holds locks (flock, POSIX, OFD)");
    assert!(s.fifo_bytes().is_empty(), "the frozen tree's FIFO still holds its bytes");
    let at = s.count();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(s.count(), at, "the frozen tree runs");

    // A target on this machine refills the FIFO from the image, and holds
    // the flock until it drops its copy: the thaw waits for it.
    let target_fifo: OwnedFd =
        fs::OpenOptions::new().read(true).write(true).custom_flags(libc::O_NONBLOCK).open(s.path("fifo")).unwrap().into();
    std::io::Write::write_all(&mut fs::File::from(target_fifo.try_clone().unwrap()), &fifo_data()).unwrap();
    let target_a = s.open("a.dat");
    rustix::fs::flock(&target_a, rustix::fs::FlockOperation::NonBlockingLockExclusive).unwrap();
    let dropper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(target_a);
        drop(target_fifo);
    });
    let t = Instant::now();
    lpm_engine::thaw_tree(pid, st.handoff, Duration::from_secs(5)).expect("thaw with the handoff");
    let waited = t.elapsed();
    dropper.join().unwrap();
    eprintln!("thaw, waiting out the target's flock: {:.1} ms", waited.as_secs_f64() * 1e3);
    assert!(waited >= Duration::from_millis(250), "the flock held elsewhere was not waited for ({waited:?})");
    assert!(!s.frozen());
    wait_for("the thawed tree to count on", 5, || s.count() >= at + 3);
    s.assert_held(pid);
    assert_eq!(s.fifo_bytes(), fifo_data(), "the FIFO does not hold its bytes exactly once");

    // Once more with a POSIX lock on b.dat that stays held elsewhere: the
    // thaw names it, gives back the rest, and the tree runs.
    let st = lpm_engine::checkpoint_with(pid, &s.path("img2"), &opts).expect("second frozen checkpoint");
    assert!(s.frozen());
    assert_eq!(s.locks_free(), [true; 3]);
    assert!(s.fifo_bytes().is_empty());
    // Our own lock comes from a child process: F_GETLK in this process
    // would not see a lock of its own as a conflict.
    let blocker = s.path("blocker.py");
    fs::write(&blocker, "import fcntl, os, sys, time\nb = os.open(sys.argv[1], os.O_RDWR)\nfcntl.lockf(b, fcntl.LOCK_EX | fcntl.LOCK_NB, 10, 20)\nopen(sys.argv[2], 'w').write('ok')\ntime.sleep(60)\n").unwrap();
    let mut blocker = Command::new("python3")
        .args([blocker.as_os_str(), s.path("b.dat").as_os_str(), s.path("blocked").as_os_str()])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let blocker = Kill(&mut blocker);
    wait_for("the blocker to lock bytes 20-29 of b.dat", 10, || s.path("blocked").exists());
    let at = s.count();
    let err = lpm_engine::thaw_tree(pid, st.handoff, Duration::from_millis(200)).expect_err("a lock held elsewhere is not taken back");
    eprintln!("{err}");
    let HandbackError::Incomplete { root, lost } = &err else { panic!("{err}") };
    assert_eq!(*root, pid);
    assert_eq!(lost.len(), 1, "{lost:?}");
    let b = s.path("b.dat").display().to_string();
    for what in [&format!("pid {pid} fd"), &b, "POSIX write lock", "bytes 0-99"] {
        assert!(lost[0].contains(what), "the error does not name {what:?}: {}", lost[0]);
    }
    assert!(!s.frozen(), "the tree stays frozen after an incomplete hand-back");
    wait_for("the tree to run without its POSIX lock", 5, || s.count() >= at + 3);
    drop(blocker);
    assert_eq!(getlk(&s.open("b.dat"), false, libc::F_WRLCK, 0, 100), None, "the POSIX lock came back after all");
    assert!(matches!(getlk(&s.open("c.dat"), true, libc::F_WRLCK, 0, 0), Some((libc::F_RDLCK, 50, 10, -1))), "the OFD lock is not back");
    assert_eq!(s.fifo_bytes(), fifo_data());
}

/// Asks for a POSIX write lock on w.dat and waits for it; says "got" once
/// it has it.
const WAITER: &str = r#"
import fcntl, os, sys, time
d = sys.argv[1]
w = os.open(d + "/w.dat", os.O_RDWR)
fcntl.lockf(w, fcntl.LOCK_EX)
open(d + "/got", "w").write("ok")
time.sleep(60)
"#;

/// A process waiting for a lock is refused, by name, by a dump that
/// leaves the tree frozen (a migration's) and by one that leaves it
/// running, without /proc/locks: the stop interrupts the wait, which the
/// registers show. The wait goes on after each refusal, and the lock is
/// taken once free.
#[test]
fn a_process_waiting_for_a_lock_is_refused_and_waits_on() {
    let mut s = Scene::new();
    fs::write(s.path("w.dat"), b"w").unwrap();
    // Ours, from an open file description of this process (OFD), so
    // that the waiter's POSIX request conflicts with it.
    let ours = s.open("w.dat");
    let fl = libc::flock { l_type: libc::F_WRLCK as i16, l_whence: libc::SEEK_SET as i16, l_start: 0, l_len: 0, l_pid: 0 };
    fcntl(&ours, FcntlArg::F_OFD_SETLK(&fl)).expect("our OFD lock on w.dat");
    let pid = s.spawn(WAITER);
    let waiting = || {
        fs::read_to_string(format!("/proc/{pid}/syscall"))
            .is_ok_and(|l| l.split_whitespace().take(3).collect::<Vec<_>>() == ["72", "0x3", "0x7"])
    };
    wait_for("the waiter to wait in fcntl(3, F_SETLKW)", 20, waiting);
    for (after, img) in [(After::Frozen, "frozen"), (After::Run, "running")] {
        let opts = DumpOptions { after, ..Default::default() };
        let err = lpm_engine::checkpoint_with(pid, &s.path(img), &opts).expect_err("a tree waiting for a lock is dumped");
        let msg = format!("{err}");
        eprintln!("{img}: {msg}");
        assert!(msg.contains("is waiting for a lock") && msg.contains(&pid.to_string()), "{img}: the error names no waiting thread: {msg}");
        assert!(!s.frozen(), "{img}: the tree stays frozen after the refusal");
        wait_for("the waiter to wait again", 5, waiting);
        assert!(!s.path("got").exists(), "{img}: the waiter took a lock that is ours");
    }
    drop(ours);
    wait_for("the waiter to take the lock once it is free", 5, || s.path("got").exists());
}
