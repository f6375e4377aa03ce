//! `lpm_engine::inspect` on the real kernel (run as root, needs python3
//! and `unshare` from util-linux): real programs holding state the
//! checkpoint refuses are named by the inspection, each refusal as the
//! dump words it, and the dump of the same program fails on the same
//! refusal; a program holding only supported state passes, is then
//! checkpointed, and finds every queue, offset and peek offset as it left
//! them, never traced or stopped.
//!
//! Each program is a python3 script that sets up its state, prints
//! "ready" and then answers each line of its stdin with a verdict of its
//! own state; the test waits on those lines, never on time. Every program
//! runs in a process group of its own, killed and reaped when its test
//! ends, also on failure; files live in a directory removed with it.

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use lpm_engine::{After, DumpOptions, Inspection, Refusal};

static SEQ: AtomicU32 = AtomicU32::new(0);

/// What every program shares: `ready()` once its state is set up, then
/// `serve(check)` answers each line of stdin with `check()`.
const PRELUDE: &str = r#"
import ctypes, fcntl, mmap, os, socket, struct, sys, threading, time
d = sys.argv[1]
def ready():
    sys.stdout.write("ready\n"); sys.stdout.flush()
def serve(check=lambda: "ok"):
    for line in sys.stdin:
        sys.stdout.write(("pong" if line == "ping\n" else check()) + "\n"); sys.stdout.flush()
"#;

/// A running program and its directory; on drop its process group is
/// killed and reaped and the directory removed.
struct Prog {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    dir: PathBuf,
}

impl Prog {
    /// Runs `prefix... python3 -c PRELUDE+script DIR` and waits for its
    /// "ready" line.
    fn start(tag: &str, prefix: &[&str], script: &str) -> Prog {
        let name = format!("lpm-inspect-{tag}-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed));
        let dir = Path::new("/dev/shm").join(name);
        fs::create_dir_all(&dir).unwrap();
        let code = format!("{PRELUDE}{script}");
        let mut argv: Vec<&str> = prefix.to_vec();
        argv.extend(["python3", "-c", &code, dir.to_str().unwrap()]);
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", argv[0]));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut p = Prog { child, stdin, stdout, dir };
        assert_eq!(p.line(), "ready", "{tag}: the program did not get ready");
        p
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.stdout.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    /// The program's verdict on its own state (it answers only if it runs).
    fn verdict(&mut self) -> String {
        writeln!(self.stdin, "check").unwrap();
        self.line()
    }

    /// Whether the program answers.
    fn alive(&mut self) -> bool {
        writeln!(self.stdin, "ping").unwrap();
        self.line() == "pong"
    }
}

impl Drop for Prog {
    fn drop(&mut self) {
        lpm_sys::misc::kill(-self.pid(), libc::SIGKILL);
        let _ = self.child.wait();
        while lpm_sys::misc::reap_any().is_some() {}
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Every thread of the tree rooted at `pid` runs free: no tracer, not
/// stopped.
fn untraced(pid: i32) {
    let mut procs = vec![pid];
    while let Some(p) = procs.pop() {
        for t in fs::read_dir(format!("/proc/{p}/task")).unwrap().flatten() {
            let tid = t.file_name().into_string().unwrap();
            let status = fs::read_to_string(format!("/proc/{p}/task/{tid}/status")).unwrap();
            assert!(status.lines().any(|l| l == "TracerPid:\t0"), "thread {tid} of {p} is traced after the inspection");
            assert!(!status.lines().any(|l| l.starts_with("State:\tt")), "thread {tid} of {p} is stopped after the inspection");
            let kids = fs::read_to_string(format!("/proc/{p}/task/{tid}/children")).unwrap();
            procs.extend(kids.split_whitespace().map(|k| k.parse::<i32>().unwrap()));
        }
    }
}

fn inspect(pid: i32, opts: &DumpOptions) -> Inspection {
    let i = lpm_engine::inspect(pid, opts).unwrap_or_else(|e| panic!("inspect {pid}: {e}"));
    eprintln!(
        "inspect {pid}: {} processes, {} threads, {} fds, {} areas in {:.2} ms",
        i.processes,
        i.threads,
        i.descriptors,
        i.areas,
        i.elapsed.as_secs_f64() * 1e3
    );
    for r in &i.refusals {
        eprintln!("  {r}");
    }
    assert!(i.unreadable.is_empty(), "inspect {pid} could not read: {:?}", i.unreadable);
    i
}

/// The refusal whose text contains `needle`; fails naming what was found.
fn named<'a>(i: &'a Inspection, needle: &str) -> &'a Refusal {
    i.refusals.iter().find(|r| r.to_string().contains(needle)).unwrap_or_else(|| panic!("no refusal names {needle:?}: {:#?}", i.refusals))
}

/// The dump of `p` (left running) fails, and on one of `i`'s refusals,
/// worded the same.
fn dump_refuses_the_same(p: &Prog, i: &Inspection, opts: DumpOptions) {
    let opts = DumpOptions { after: After::Run, ..opts };
    let err = lpm_engine::checkpoint_with(p.pid(), &p.dir.join("img"), &opts).expect_err("the dump took a tree inspect refused");
    let msg = err.to_string();
    assert!(i.refusals.iter().any(|r| r.to_string() == msg), "the dump refused {msg:?}, which inspect did not name: {:#?}", i.refusals);
}

/// A packet socket (AF_PACKET) with a receive ring fails the inspection
/// as it fails the dump, by pid, fd and kind, and the program runs on.
#[test]
fn packet_socket_with_a_ring_is_refused_as_the_dump_refuses_it() {
    let script = "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)\n\
                  s.setsockopt(263, 10, 1)\n\
                  s.setsockopt(263, 5, struct.pack('IIII', 4096, 4, 2048, 8))\n\
                  ready()\nserve()\n";
    let mut p = Prog::start("packet", &[], script);
    let i = inspect(p.pid(), &DumpOptions::default());
    let r = named(&i, "packet socket with a PACKET_RX_RING ring");
    assert_eq!((r.pid, r.kind, r.transient), (p.pid(), "file descriptor", false));
    assert!(r.what.starts_with("fd 3 -> socket:["), "the refusal does not name the fd and its target: {r}");
    assert_eq!(i.refusals.len(), 1, "{:#?}", i.refusals);
    assert!(!i.passed());
    untraced(p.pid());
    dump_refuses_the_same(&p, &i, DumpOptions::default());
    assert_eq!(p.verdict(), "ok");
}

/// Netlink sockets the dump cannot rebuild are named: one with unread
/// messages (at this moment: the kernel's answers, which no restore can
/// send as the kernel), one connected to a port no socket of the tree
/// holds (lasting). The program runs on and still reads its messages.
#[test]
fn netlink_refusals_are_named() {
    let script = r#"
nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
nl.bind((0, 0))
# RTM_GETLINK dump request (NLM_F_REQUEST | NLM_F_DUMP), left unread.
nl.send(struct.pack("=IHHIIBxxx", 20, 18, 0x301, 1, 0, 0))
peer = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 2)  # NETLINK_USERSOCK
peer.bind((0, 0))
peer.connect((0x7b000001, 0))
ready()
serve(lambda: "ok" if nl.recv(65536, socket.MSG_DONTWAIT) else "empty")
"#;
    let mut p = Prog::start("netlink", &[], script);
    let i = inspect(p.pid(), &DumpOptions::default());
    let unread = named(&i, "with unread messages");
    assert!(unread.transient, "{unread}");
    let outside = named(&i, "connected to port 2063597569, which no socket of the tree holds");
    assert!(!outside.transient, "{outside}");
    assert_eq!(i.refusals.len(), 2, "{:#?}", i.refusals);
    untraced(p.pid());
    dump_refuses_the_same(&p, &i, DumpOptions::default());
    assert_eq!(p.verdict(), "ok");
}

/// One program holding three refused kinds at once (a packet socket
/// with a transmit ring, a character device, a SysV segment of the host's
/// ipc namespace) gets all three named, each with its object; beside them
/// a file mapped and held open by a name removed since, while another
/// remains, is not refused.
#[test]
fn every_refusal_of_a_process_is_named() {
    let script = r#"
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
raw.setsockopt(263, 10, 1)
raw.setsockopt(263, 13, struct.pack('IIII', 4096, 4, 2048, 8))
tun = os.open("/dev/net/tun", os.O_RDWR)
f = open(d + "/gone", "w+b"); f.write(b"x" * 8192); f.flush()
m = mmap.mmap(f.fileno(), 8192)
os.link(d + "/gone", d + "/kept")
os.unlink(d + "/gone")
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget(0, 4096, 0o1600)
assert shmid >= 0
assert libc.shmat(shmid, None, 0) not in (None, ctypes.c_void_p(-1).value)
libc.shmctl(shmid, 0, None)  # IPC_RMID: gone once detached
ready()
serve()
"#;
    let mut p = Prog::start("many", &[], script);
    let i = inspect(p.pid(), &DumpOptions::default());
    let raw = named(&i, "packet socket with a PACKET_TX_RING ring");
    assert_eq!(raw.kind, "file descriptor");
    let tun = named(&i, "character device 10:200");
    assert!(tun.what.contains("/dev/net/tun"), "{tun}");
    // A file mapped and held open by a name removed since, while
    // another remains, is kept (reopened by its handle): not refused.
    let shm = named(&i, "in the host's ipc namespace");
    assert_eq!(shm.kind, "memory area");
    assert!(i.refusals.iter().all(|r| r.pid == p.pid() && !r.transient), "{:#?}", i.refusals);
    assert_eq!(i.refusals.len(), 3, "{:#?}", i.refusals);
    untraced(p.pid());
    dump_refuses_the_same(&p, &i, DumpOptions::default());
    assert_eq!(p.verdict(), "ok");
}

/// States that pass by themselves are refused as transient, each in the
/// thread or socket holding it: a datagram queued on a UDP socket, a
/// connection (the test's) waiting in a unix listener's accept queue, and a thread
/// (not the leader) sleeping in a lock request (seen in
/// /proc/PID/task/TID/syscall, the tree never stopped). The request goes
/// on waiting and takes the lock once the test lets go of it.
#[test]
fn passing_states_are_refused_as_transient() {
    let dir = Path::new("/dev/shm").join(format!("lpm-inspect-lock-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    fs::create_dir_all(&dir).unwrap();
    // Removed however the test ends.
    struct Gone(PathBuf);
    impl Drop for Gone {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let _gone = Gone(dir.clone());
    let file = dir.join("w.dat");
    fs::write(&file, b"w").unwrap();
    // Ours, an OFD lock, so the program's POSIX request conflicts with it.
    let ours = fs::OpenOptions::new().read(true).write(true).open(&file).unwrap();
    let fl = libc::flock { l_type: libc::F_WRLCK as i16, l_whence: libc::SEEK_SET as i16, l_start: 0, l_len: 0, l_pid: 0 };
    nix::fcntl::fcntl(&ours, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)).expect("our OFD lock");
    let script = format!(
        r#"
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0)); u.sendto(b"hi", u.getsockname())
l = socket.socket(socket.AF_UNIX); l.bind(d + "/sock"); l.listen(4)
w = os.open("{}", os.O_RDWR)
got = threading.Event()
def waiter():
    fcntl.lockf(w, fcntl.LOCK_EX)
    got.set()
threading.Thread(target=waiter, daemon=True).start()
ready()
serve(lambda: "locked" if got.wait(30) else "still waiting")
"#,
        file.display()
    );
    let mut p = Prog::start("transient", &[], &script);
    let pid = p.pid();
    // A client of the test's waits in the program's accept queue.
    let _client = std::os::unix::net::UnixStream::connect(p.dir.join("sock")).unwrap();
    // The waiting thread is asleep in fcntl(w, F_SETLKW) once /proc says so.
    let tid = || -> Option<i32> {
        fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten().find_map(|t| {
            let tid: i32 = t.file_name().into_string().ok()?.parse().ok()?;
            let sc = fs::read_to_string(format!("/proc/{pid}/task/{tid}/syscall")).ok()?;
            (tid != pid && sc.split_whitespace().nth(2) == Some("0x7")).then_some(tid)
        })
    };
    common::wait_for("the thread to wait for the lock", 10, || tid().is_some());
    let waiter = tid().unwrap();
    let i = inspect(pid, &DumpOptions::default());
    for needle in ["has datagrams queued", "connections waiting in its accept queue", &format!("thread {waiter} is waiting for a lock")] {
        let r = named(&i, needle);
        assert!(r.transient, "not marked transient: {r}");
        assert!(r.to_string().contains("at this moment"), "{r}");
    }
    assert_eq!(i.lasting().count(), 0, "{:#?}", i.refusals);
    untraced(pid);
    dump_refuses_the_same(&p, &i, DumpOptions::default());
    drop(ours);
    assert_eq!(p.verdict(), "locked", "the lock request did not go on after the inspection");
    drop(p);
}

/// A TCP connection to a peer outside the tree is refused unless the
/// caller locks the network (`tcp_established`, as a migration does);
/// a tree that is not alone in a cgroup v2 of its own cannot be left
/// frozen (`After::Frozen`), named as the dump names it.
#[test]
fn options_of_the_dump_apply() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let script = format!("c = socket.create_connection(('127.0.0.1', {port}))\nready()\nserve()\n");
    let mut p = Prog::start("tcp", &[], &script);
    let (_peer, _) = l.accept().unwrap();
    let i = inspect(p.pid(), &DumpOptions::default());
    let r = named(&i, "outside the tree (in state ESTABLISHED; lpm locks the network");
    assert!(!r.transient);
    dump_refuses_the_same(&p, &i, DumpOptions::default());
    let locked = DumpOptions { tcp_established: true, ..Default::default() };
    assert!(inspect(p.pid(), &locked).passed(), "a connection outside is refused with the network locked");
    let frozen = DumpOptions { tcp_established: true, after: After::Frozen, ..Default::default() };
    let i = inspect(p.pid(), &frozen);
    let r = named(&i, "not alone in a cgroup v2 of its own");
    assert_eq!((r.kind, r.pid), ("process tree", p.pid()));
    untraced(p.pid());
    assert_eq!(p.verdict(), "ok");
}

/// An inotify instance in a mount namespace of the program's own (as
/// every partition has) is read as the program sees its files: a watch
/// on its work directory passes, and a watch on a file that a mount of
/// the program's namespace now covers is refused by name (from lpm's own
/// namespace the file's path still leads to it); the program runs on.
#[test]
fn inotify_in_another_mount_namespace_is_read_as_the_program_sees_it() {
    let script = "libc = ctypes.CDLL(None, use_errno=True)\n\
                  os.mkdir(d + '/covered'); open(d + '/covered/f', 'w').close()\n\
                  fd = libc.inotify_init1(0)\nassert fd >= 0\n\
                  assert libc.inotify_add_watch(fd, d.encode(), 2) == 1\n\
                  assert libc.inotify_add_watch(fd, (d + '/covered/f').encode(), 2) == 2\n\
                  assert libc.mount(b'none', (d + '/covered').encode(), b'tmpfs', 0, None) == 0, ctypes.get_errno()\n\
                  ready()\nserve()\n";
    let mut p = Prog::start("inotify", &["unshare", "--mount", "--propagation", "private"], script);
    let i = inspect(p.pid(), &DumpOptions::default());
    let r = named(&i, "inotify watch 2 on ");
    assert!(r.what.contains("/covered/f, which no longer leads to the watched inode"), "{r}");
    assert!(!i.refusals.iter().any(|r| r.to_string().contains("inotify watch 1 ")), "{:#?}", i.refusals);
    assert!(
        i.refusals.iter().all(|r| r.to_string().contains("inotify watch 2 ") || r.to_string().contains("tmpfs at ")),
        "{:#?}",
        i.refusals
    );
    dump_refuses_the_same(&p, &i, DumpOptions::default());
    assert_eq!(p.verdict(), "ok");
}

/// Supported state of many kinds, in two processes and four threads:
/// unix stream pair with data queued and a peek offset set, a unix
/// datagram pair with two datagrams queued, a pipe holding data, a TCP
/// listener, a connection inside the tree with unread data, a bound UDP
/// socket, an eventfd, a memfd, a file and anonymous memory. Inspect
/// passes it without tracing or stopping it, the dump (left running)
/// agrees, and the program finds every byte and offset as it left them.
#[test]
fn supported_tree_passes_and_runs_undisturbed() {
    let script = r#"
a, b = socket.socketpair(); a.sendall(b"0123456789")
b.setsockopt(socket.SOL_SOCKET, 42, 3)  # SO_PEEK_OFF
da, db = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM); da.send(b"one"); da.send(b"two")
r, w = os.pipe(); os.write(w, b"piped")
lst = socket.socket(); lst.bind(("127.0.0.1", 0)); lst.listen(8)
cl = socket.create_connection(lst.getsockname()); sv, _ = lst.accept(); cl.sendall(b"tcp data")
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
ev = os.eventfd(7)
mf = os.memfd_create("lpm-inspect"); os.write(mf, b"m" * 10000)
fl = open(d + "/file", "w+"); fl.write("hello"); fl.flush()
anon = mmap.mmap(-1, 64 << 20)
for i in range(0, 64 << 20, 4096): anon[i] = 1
stop = threading.Event()
for _ in range(3): threading.Thread(target=stop.wait, daemon=True).start()
kid = os.fork()
if kid == 0:
    os.close(w); signal_r = os.read(r, 0)
    while True: time.sleep(3600)
def check():
    bad = []
    if b.getsockopt(socket.SOL_SOCKET, 42) != 3: bad.append("peek offset")
    if b.recv(100, socket.MSG_DONTWAIT) != b"0123456789": bad.append("stream queue")
    if [db.recv(10, socket.MSG_DONTWAIT) for _ in range(2)] != [b"one", b"two"]: bad.append("datagrams")
    if os.read(r, 100) != b"piped": bad.append("pipe")
    if sv.recv(100, socket.MSG_DONTWAIT) != b"tcp data": bad.append("tcp")
    if os.eventfd_read(ev) != 7: bad.append("eventfd")
    if os.pread(mf, 10000, 0) != b"m" * 10000: bad.append("memfd")
    if fl.tell() != 5: bad.append("file offset")
    return "ok" if not bad else "lost " + ",".join(bad)
ready()
serve(check)
"#;
    let mut p = Prog::start("supported", &[], script);
    // The network is not locked: the connection is found to be inside.
    let opts = DumpOptions::default();
    let mut times = Vec::new();
    for _ in 0..5 {
        let i = inspect(p.pid(), &opts);
        assert!(i.passed(), "a supported tree is refused: {:#?}", i.refusals);
        assert_eq!((i.processes, i.threads), (2, 5), "not every process and thread was inspected");
        times.push(i.elapsed);
        untraced(p.pid());
    }
    times.sort();
    eprintln!("inspect of a 2-process, 5-thread python tree with 64 MiB touched: median {:.2} ms", times[2].as_secs_f64() * 1e3);
    assert_eq!(p.verdict(), "ok", "the program lost state to the inspections");
    let img = p.dir.join("img");
    let t = Instant::now();
    let stats = lpm_engine::checkpoint_with(p.pid(), &img, &DumpOptions { after: After::Run, ..opts })
        .unwrap_or_else(|e| panic!("the dump refused what inspect passed: {e}"));
    eprintln!(
        "the dump (left running) took {:.2} ms, the tree stopped {:.2} ms",
        t.elapsed().as_secs_f64() * 1e3,
        stats.frozen.as_secs_f64() * 1e3
    );
    assert!(p.alive(), "the program does not answer after the dump");
}

/// The file and socket states a restore could not rebuild exactly are
/// each named, by the inspection and the dump alike: a file owned for
/// SIGIO by a process outside the tree (the test), a thread with a
/// descriptor table of its own, a process sharing its table with its
/// sibling rather than its parent, a socket with an eBPF filter, an
/// unlinked file holding more data than the image keeps.
#[test]
fn file_and_socket_refusals_are_named() {
    let script = r#"
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
r, w = os.pipe()
fcntl.fcntl(r, fcntl.F_SETOWN, os.getppid())
def own_table():
    assert libc.unshare(0x400) == 0  # CLONE_FILES
    time.sleep(3600)
threading.Thread(target=own_table, daemon=True).start()
a = os.fork()
if a == 0:
    # A sibling sharing this child's table: clone(CLONE_PARENT|CLONE_FILES).
    if libc.syscall(56, 0x8000 | 0x400 | 17, 0, 0, 0, 0) == 0:
        while True: time.sleep(3600)
    while True: time.sleep(3600)
# eBPF socket filter: r0 = 0; exit (drops everything).
insns = struct.pack("<BBhi", 0xb7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)
ibuf = ctypes.create_string_buffer(insns); lic = ctypes.create_string_buffer(b"GPL")
attr = struct.pack("<IIQQIIQI", 1, 2, ctypes.addressof(ibuf), ctypes.addressof(lic), 0, 0, 0, 0) + bytes(64)
abuf = ctypes.create_string_buffer(attr, 128)
prog = libc.syscall(321, 5, abuf, 128)  # bpf(BPF_PROG_LOAD)
assert prog >= 0, ctypes.get_errno()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, 50, prog)  # SO_ATTACH_BPF
os.close(prog)
big = open(d + "/big", "w+b"); big.write(b"x" * (65 << 20)); big.flush(); os.unlink(d + "/big")
time.sleep(0.2)
ready()
serve()
"#;
    let mut p = Prog::start("fileref", &[], script);
    let i = inspect(p.pid(), &DumpOptions::default());
    let owner = named(&i, "owner for SIGIO");
    assert!(owner.what.contains("outside the tree or exited"), "{owner}");
    let thread = named(&i, "has a file descriptor table of its own");
    assert_eq!((thread.pid, thread.kind), (p.pid(), "file descriptor table"));
    let shared = named(&i, "which is not its parent");
    assert_eq!(shared.kind, "file descriptor table");
    assert_ne!(shared.pid, p.pid(), "{shared}");
    named(&i, "eBPF filter");
    // An unlinked file of any size is kept (its data streamed to the
    // image): not refused.
    assert!(i.refusals.iter().all(|r| !r.transient), "{:#?}", i.refusals);
    assert_eq!(i.refusals.len(), 4, "{:#?}", i.refusals);
    untraced(p.pid());
    dump_refuses_the_same(&p, &i, DumpOptions::default());
    assert!(p.alive());
}

/// A pipe holding data written in packet mode (O_DIRECT): the dump sees
/// it as it copies the buffer and refuses it, naming the fd; the message
/// boundaries are untouched (the copy is not a read of the pipe).
#[test]
fn packet_mode_pipe_data_is_refused_by_the_dump() {
    let script = r#"
r, w = os.pipe2(os.O_DIRECT)
os.write(w, b"one"); os.write(w, b"two")
ready()
serve(lambda: "ok" if [os.read(r, 100), os.read(r, 100)] == [b"one", b"two"] else "messages merged")
"#;
    let mut p = Prog::start("packet", &[], script);
    let i = inspect(p.pid(), &DumpOptions::default());
    assert!(i.passed(), "only the dump sees a pipe's buffer: {:#?}", i.refusals);
    let err = lpm_engine::checkpoint_with(p.pid(), &p.dir.join("img"), &DumpOptions { after: After::Run, ..Default::default() })
        .expect_err("the dump took packet-mode data");
    let msg = err.to_string();
    assert!(msg.contains(&format!("pid {}: unsupported file descriptor: fd 3 -> pipe:[", p.pid())) && msg.contains("packet mode"), "{msg}");
    untraced(p.pid());
    assert_eq!(p.verdict(), "ok");
}
