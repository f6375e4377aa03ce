//! Live migration when things go wrong (issue 4): the target's lpmd dies
//! at each step before "go", the network between the hosts is cut in the
//! middle of the stream, a frame arrives corrupted, a peer holds the wrong
//! key. Each time the partition must keep running on the source with its
//! client connected and every answer right, and nothing of it may be left
//! on the target (after the crashed agent is restarted, which sweeps what
//! its predecessor left); a migration after the failure then succeeds.
//!
//! Faults are injected with `LPM_FAULT` (crates/agent/src/fault.rs) in the
//! environment of `lpm lab up`, which every lpmd of the lab inherits; a
//! restarted lpmd inherits the test's environment, without the fault.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lpm_agent::api::{Mover, Request, Response};
use lpm_host::cgroup::Layout;
use lpm_host::partition::{HostCtx, PartitionSpec};
use lpm_wire::{FrameType, Role};
use prost::Message;

mod common;

use common::lab::{TestLab, KV_SERVICE as SERVICE};
/// The benchmark's partition program: writes its memory, checks every
/// page on SIGUSR1.
const DIRTIER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/dirtier.c");

fn show(lab: &TestLab, name: &str) -> serde_json::Value {
    serde_json::from_str(&lab.ok(&["partition", "show", name])).unwrap()
}

fn create_service(lab: &TestLab, name: &str, host: &str, mib: u32) {
    let dir = lab.dir.to_string_lossy().into_owned();
    let mib = mib.to_string();
    lab.ok(&["partition", "create", name, "--host", host, "--memory", "1G", "--volume", &dir, "--", "python3", SERVICE, "7000", &mib]);
}

fn wait_log(lab: &TestLab, name: &str, what: &str) {
    for _ in 0..100 {
        if lab.ok(&["partition", "logs", name]).contains(what) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("partition {name} never logged {what:?}: {}", lab.ok(&["partition", "logs", name]));
}

/// The kv service with 64 MiB on h1 (pre-copy takes several frames) and a
/// connected client; returns the client.
fn kv_with_client(lab: &mut TestLab) -> usize {
    create_service(lab, "kv", "h1", 64);
    wait_log(lab, "kv", "listening");
    let ip = show(lab, "kv")["spec"]["ip"].as_str().unwrap().split('/').next().unwrap().to_string();
    let c = lab.kv_client(&ip);
    wait_log(lab, "kv", "connected");
    std::thread::sleep(Duration::from_millis(300));
    c
}

/// kv runs on h1 as far as h1's lpmd knows (asked directly).
fn runs_on_h1(lab: &TestLab) {
    let p = lab.partitions_on("h1");
    let kv = p.iter().find(|p| p.spec.name == "kv").unwrap_or_else(|| panic!("kv not on h1: {p:?}"));
    assert_eq!(kv.state, "running", "{kv:?}");
    let pid = kv.pid.expect("pid");
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "kv's init {pid} is gone");
    // Rolled back for real: thawed, and its NIC on the bridge again.
    let l = lab.lab();
    let ctx = HostCtx { host: "h1".into(), dir: lab.dir.clone(), bridge: "lpmbr0".into(), prefix: l.prefix() };
    let events = Layout::current().unwrap().v2_root().join(ctx.cgroup_rel("kv")).join("cgroup.events");
    let events = std::fs::read_to_string(&events).unwrap();
    assert!(events.contains("frozen 0"), "kv stays frozen on h1: {events}");
    let link = Command::new("ip").args(["-n", &l.host("h1").unwrap().netns, "-o", "link", "show", &ctx.veth_name("kv")]).output().unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains(",UP") || link.contains("<UP"), "kv's network stays locked on h1: {link}");
}

/// The target's lpmd dies (SIGKILL, by `LPM_FAULT`) at one step before
/// "go". The source rolls back; the partition serves on as before; the
/// restarted target sweeps what its predecessor left; a new migration to
/// it succeeds.
fn target_dies(tag: &str, fault: &str, point: &str) {
    let t0 = Instant::now();
    let mut lab = TestLab::up_with(tag, 2, &[("LPM_FAULT", fault)]);
    let c = kv_with_client(&mut lab);
    let h2_pid = lab.lab().host("h2").unwrap().pid.unwrap();

    let err = lab.fails(&["migrate", "kv", "--to", "h2", "--json"]);
    assert!(err.contains("migrate kv to h2"), "unclear failure: {err}");
    // The fault fired where asked, and it was a crash.
    let log = lab.log_of("h2");
    assert!(log.contains("fault injected") && log.contains(point), "the fault at {point} did not fire:\n{log}");
    assert!(!Path::new(&format!("/proc/{h2_pid}/cwd")).exists(), "h2's lpmd {h2_pid} survived its fault");
    runs_on_h1(&lab);
    lab.client_alive(c);
    let reports = lab.call("h1", &Request::Reports).unwrap();
    let Response::Reports(r) = reports else { panic!("{reports:?}") };
    assert_eq!(r.len(), 1);
    assert!(matches!(r[0].outcome, lpm_migrate::report::Outcome::Failed { .. }), "{:?}", r[0].outcome);

    lab.lab().restart("h2").expect("restart h2's lpmd");
    assert_eq!(lab.leftovers("h2"), Vec::<String>::new(), "the restarted lpmd left pieces of kv on h2");
    assert!(lab.partitions_on("h2").is_empty());
    let s = show(&lab, "kv");
    assert_eq!((s["host"].as_str(), s["state"].as_str()), (Some("h1"), Some("running")), "{s}");

    // A clean target takes it.
    let out = lab.ok(&["migrate", "kv", "--to", "h2", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["outcome"]["result"], serde_json::json!("completed"), "report: {r}");
    assert_eq!(show(&lab, "kv")["host"], serde_json::json!("h2"));
    // The source removes its frozen copy after it reported.
    lab.wait_clean("h1", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    let n = lab.finish_kv_client(c);
    assert!(n > 50, "the client made only {n} requests");
    eprintln!("{tag}: {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn target_crash_during_precopy() {
    // The fourth Pages frame: the target holds part of the memory.
    target_dies("fpages", "h2:target.pages=kill+after=3", "target.pages");
}

#[test]
fn target_crash_during_final_copy() {
    // The first image file of the frozen partition: the source is frozen
    // and must thaw.
    target_dies("fimage", "h2:target.image=kill", "target.image");
}

#[test]
fn target_crash_after_restore_before_go() {
    // The partition is restored (held, stopped) on the target, which dies
    // before it answers: a copy exists on both hosts, only h1's may run.
    target_dies("frestored", "h2:target.restored=kill", "target.restored");
}

/// The management link of the target goes down in the middle of the
/// pre-copy: both movers time out (LPM_MOVER_TIMEOUT_MS), the source rolls
/// back, the target removes its incoming copy by itself.
#[test]
fn network_cut_during_precopy() {
    let t0 = Instant::now();
    // The target reads slowly, so the stream is surely still going when
    // the link goes down.
    let mut lab = TestLab::up_with("fcut", 2, &[("LPM_FAULT", "h2:target.pages=sleep=200+after=1"), ("LPM_MOVER_TIMEOUT_MS", "2000")]);
    let c = kv_with_client(&mut lab);
    let ns = lab.lab().host("h2").unwrap().netns.clone();
    let mut mig = lab.cmd(&["migrate", "kv", "--to", "h2"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    lab.wait_for_log("h2", "fault injected", Duration::from_secs(30));
    let st = Command::new("ip").args(["-n", &ns, "link", "set", "mgmt0", "down"]).status().unwrap();
    assert!(st.success());
    let t_cut = Instant::now();
    let out = loop {
        if mig.try_wait().unwrap().is_some() {
            break mig.wait_with_output().unwrap();
        }
        if t_cut.elapsed() > Duration::from_secs(40) {
            let _ = mig.kill();
            panic!("lpm migrate hangs {:?} after the link went down", t_cut.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let gave_up = t_cut.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the migration succeeded over a cut link: {err}");
    assert!(err.contains("migrate kv to h2"), "unclear failure: {err}");
    runs_on_h1(&lab);
    lab.client_alive(c);
    let s = show(&lab, "kv");
    assert_eq!((s["host"].as_str(), s["state"].as_str()), (Some("h1"), Some("running")), "{s}");

    let st = Command::new("ip").args(["-n", &ns, "link", "set", "mgmt0", "up"]).status().unwrap();
    assert!(st.success());
    // The target gave up by itself (its own timeout) and removed its copy.
    lab.wait_clean("h2", Duration::from_secs(15));
    assert!(lab.partitions_on("h2").is_empty());
    assert!(lab.log_of("h2").contains("mover connection"), "h2 logged no failed mover connection:\n{}", lab.log_of("h2"));
    std::thread::sleep(Duration::from_millis(300));
    let n = lab.finish_kv_client(c);
    assert!(n > 50, "the client made only {n} requests");
    eprintln!("network cut: source gave up {:.1} s after the cut; {:.1} s in all", gave_up.as_secs_f64(), t0.elapsed().as_secs_f64());
}

/// A Pages frame corrupted after its checksum was computed: the target
/// refuses it, the migration fails saying so, nothing is left on h2.
#[test]
fn corrupted_frame_is_refused() {
    let t0 = Instant::now();
    let mut lab = TestLab::up_with("fflip", 2, &[("LPM_FAULT", "h1:source.pages=flip+after=2")]);
    let c = kv_with_client(&mut lab);
    let err = lab.fails(&["migrate", "kv", "--to", "h2"]);
    assert!(lab.log_of("h1").contains("fault injected"), "no frame was flipped:\n{}", lab.log_of("h1"));
    assert!(
        err.contains("migrate kv to h2") && err.contains("checksum"),
        "the failure does not name the checksum: {err}\nh2:\n{}",
        lab.log_of("h2")
    );
    runs_on_h1(&lab);
    lab.client_alive(c);
    lab.wait_clean("h2", Duration::from_secs(10));
    assert!(lab.partitions_on("h2").is_empty());
    std::thread::sleep(Duration::from_millis(300));
    lab.finish_kv_client(c);
    eprintln!("corrupted frame: {:.1} s", t0.elapsed().as_secs_f64());
}

/// Reads one frame; `None` when the peer closed the connection.
fn frame(s: &mut TcpStream) -> Option<lpm_wire::Frame> {
    lpm_wire::read_frame(s).ok()
}

#[test]
fn wrong_key_is_refused_and_creates_nothing() {
    // The key's challenge guards the movers of insecure hosts (and the
    // control socket): with TLS the certificates do (mover_tls.rs).
    let lab = TestLab::up_insecure("fkey", 2);
    create_service(&lab, "kv", "h1", 8);
    wait_log(&lab, "kv", "listening");
    let l = lab.lab();
    let target: SocketAddr = l.host("h2").unwrap().listen.into();
    let spec: PartitionSpec = serde_json::from_value(show(&lab, "kv")["spec"].clone()).unwrap();
    let wrong = lpm_wire::Key::derive(b"not the cluster key");
    let h1 = l.netns_of("h1").unwrap().fd().unwrap();
    // From h1's namespace, over the management network, as a source would.
    lpm_sys::net::in_netns(h1.as_fd(), || {
        let connect = || {
            let s = TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("reach h2's mover");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        };
        // lpm-wire's handshake with another key: h2 cannot prove it holds
        // ours, so we stop.
        let mut s = connect();
        let e = lpm_wire::handshake(&mut s, Role::Opener, &wrong, "intruder").unwrap_err();
        assert!(matches!(e, lpm_wire::WireError::Auth(_)), "{e}");
        // An opener that ignores that and answers with a MAC made with
        // another key: h2 refuses it and closes.
        let mut s = connect();
        let hello = lpm_wire::Hello { max_version: 1, min_version: 1, nonce: vec![7; 32], name: "intruder".into() };
        lpm_wire::write_frame(&mut s, FrameType::Hello, &hello.encode_to_vec(), None).unwrap();
        let reply = frame(&mut s).expect("a HelloReply");
        assert_eq!(reply.kind, FrameType::HelloReply);
        let auth = lpm_wire::Auth { mac: vec![0x5a; 32] };
        lpm_wire::write_frame(&mut s, FrameType::Auth, &auth.encode_to_vec(), None).unwrap();
        let refusal = frame(&mut s).expect("a refusal");
        assert_eq!((refusal.kind, refusal.payload.as_slice()), (FrameType::Error, b"authentication failed".as_slice()));
        // Whatever follows is not read: the connection is closed.
        let _ = lpm_agent::api::send(
            &mut s,
            &Mover::Prepare { id: "m00000001".into(), spec: spec.clone(), source_addr: "10.0.0.1:1".into(), source: "intruder".into() },
        );
        assert!(frame(&mut s).is_none(), "h2 answered after refusing");
        // No handshake at all, straight to "prepare": refused too.
        let mut s = connect();
        let _ = lpm_agent::api::send(
            &mut s,
            &Mover::Prepare { id: "m00000001".into(), spec: spec.clone(), source_addr: "10.0.0.1:1".into(), source: "intruder".into() },
        );
        match frame(&mut s) {
            None => {}
            Some(f) => assert_eq!(f.kind, FrameType::Error, "h2 answered a prepare without handshake: {f:?}"),
        }
    })
    .unwrap();
    lab.wait_for_log("h2", "mover handshake", Duration::from_secs(5));

    // The CLI with an operator identity of another site.
    let good = lab.foreign_operator();
    let err = lab.fails(&["migrate", "kv", "--to", "h2"]);
    let err2 = lab.fails(&["partition", "create", "intruder", "--host", "h2", "--", "sleep", "100"]);
    std::fs::write(l.hosts_file(), good).unwrap();
    for e in [&err, &err2] {
        assert!(e.contains("TLS handshake"), "not a refusal at the handshake: {e}");
    }

    // Nothing was created anywhere.
    assert_eq!(lab.leftovers("h2"), Vec::<String>::new());
    assert!(lab.partitions_on("h2").is_empty());
    let on_h1: Vec<String> = lab.partitions_on("h1").into_iter().map(|p| p.spec.name).collect();
    assert_eq!(on_h1, ["kv"]);
    let prefix = lab.lab().prefix();
    let shm: Vec<String> = std::fs::read_dir("/dev/shm")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert!(shm.is_empty(), "scratch directories: {shm:?}");
    for h in ["h1", "h2"] {
        let Response::Reports(r) = lab.call(h, &Request::Reports).unwrap() else { panic!() };
        assert!(r.is_empty(), "{h} has migration reports: {r:?}");
    }
    let s = show(&lab, "kv");
    assert_eq!((s["host"].as_str(), s["state"].as_str()), (Some("h1"), Some("running")), "{s}");
}

/// Starts zdtm program `prog` (`tests/zdtm/`) as the init of partition
/// `name` on h1, its work dir in the lab's volume (shared storage);
/// returns the work dir once the program is ready.
fn zdtm_partition(lab: &TestLab, prog: &str, name: &str) -> PathBuf {
    let p = common::zdtm_progs::find_prog(prog);
    let work = lab.dir.join(format!("work-{prog}"));
    std::fs::create_dir_all(&work).unwrap();
    let bin = common::zdtm_progs::build(p, &lab.dir).unwrap_or_else(|e| panic!("{e}"));
    let vol = lab.dir.to_string_lossy().into_owned();
    let w = |f: &str| work.join(f).to_string_lossy().into_owned();
    let argv =
        ["env".into(), "-C".into(), w(""), "LC_ALL=C".into(), format!("ZDTM_READY={}", w("ready")), format!("ZDTM_RESULT={}", w("result"))];
    let mut args = vec!["partition", "create", name, "--host", "h1", "--volume", &vol, "--"];
    args.extend(argv.iter().map(String::as_str));
    let bin = bin.to_string_lossy().into_owned();
    args.push(&bin);
    lab.ok(&args);
    let t = Instant::now();
    while std::fs::read_to_string(work.join("ready")).ok().as_deref() != Some("ready\n") {
        assert!(t.elapsed() < Duration::from_secs(30), "{prog} not ready: {}", lab.ok(&["partition", "logs", name]));
        std::thread::sleep(Duration::from_millis(20));
    }
    work
}

/// SIGTERM to the init of partition `name` on `host`: the zdtm program
/// verifies itself and writes its result, which is returned.
fn zdtm_verdict(lab: &TestLab, name: &str, host: &str, work: &Path) -> String {
    let p = lab.partitions_on(host);
    let pid = p.iter().find(|p| p.spec.name == name).and_then(|p| p.pid).unwrap_or_else(|| panic!("{name} not running on {host}: {p:?}"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    let t = Instant::now();
    loop {
        if let Ok(r) = std::fs::read_to_string(work.join("result")) {
            return r;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "{name} gave no verdict: {}", lab.ok(&["partition", "logs", name]));
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// F_GETLK (or F_OFD_GETLK) from this process for a lock of type `ty` on
/// `start`+`len` of `file`: the conflicting lock as (type, start, len,
/// pid), or None.
fn getlk(file: &Path, ofd: bool, ty: i32, start: i64, len: i64) -> Option<(i32, i64, i64, i32)> {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(file).unwrap();
    let mut fl = libc::flock { l_type: ty as i16, l_whence: libc::SEEK_SET as i16, l_start: start, l_len: len, l_pid: 0 };
    let arg = if ofd { nix::fcntl::FcntlArg::F_OFD_GETLK(&mut fl) } else { nix::fcntl::FcntlArg::F_GETLK(&mut fl) };
    nix::fcntl::fcntl(&f, arg).unwrap();
    (fl.l_type as i32 != libc::F_UNLCK).then_some((fl.l_type as i32, fl.l_start, fl.l_len, fl.l_pid))
}

/// The locks zdtm file_locks' init (host pid `pid`) holds on the shared
/// volume, seen from outside: its flock on a.dat, its POSIX write lock on
/// bytes 0-99 of b.dat, its OFD write lock on bytes 10-19 of c.dat, and
/// its child's POSIX read lock on bytes 400-499 of b.dat.
fn assert_file_locks_held(work: &Path, pid: i32, when: &str) {
    let a = std::fs::OpenOptions::new().read(true).write(true).open(work.join("a.dat")).unwrap();
    assert!(
        matches!(nix::fcntl::Flock::lock(a, nix::fcntl::FlockArg::LockSharedNonblock), Err((_, nix::errno::Errno::EWOULDBLOCK))),
        "{when}: a.dat is not flocked"
    );
    assert_eq!(getlk(&work.join("b.dat"), false, libc::F_RDLCK, 0, 1), Some((libc::F_WRLCK, 0, 100, pid)), "{when}: POSIX lock on b.dat");
    assert_eq!(getlk(&work.join("c.dat"), true, libc::F_RDLCK, 0, 0), Some((libc::F_WRLCK, 10, 10, -1)), "{when}: OFD lock on c.dat");
    // And its child's POSIX read lock on bytes 400-499 of b.dat.
    let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let child: i32 = kids.trim().parse().unwrap_or_else(|_| panic!("{when}: file_locks' init {pid} has children {kids:?}"));
    assert_eq!(
        getlk(&work.join("b.dat"), false, libc::F_WRLCK, 400, 1),
        Some((libc::F_RDLCK, 400, 100, child)),
        "{when}: the child's lock"
    );
}

/// The target fails after restoring (held, before "go") a partition that
/// holds file locks on the shared volume (zdtm file_locks: flock, POSIX
/// and OFD locks), then one whose FIFO holds data (zdtm pipes). The frozen
/// source had let go of the locks and emptied the FIFO for the target;
/// its rollback takes every lock back (waiting for the target to drop its
/// copy, which holds them) and refills the FIFO without doubling what the
/// target's restore put in the shared buffer. Both programs then verify
/// themselves on h1, and file_locks moves to h2 and verifies itself there.
#[test]
fn rollback_after_restore_gives_back_locks_and_fifo_data() {
    let t0 = Instant::now();
    let lab = TestLab::up_with("flocks", 2, &[("LPM_FAULT", "h2:target.restored=fail,h2:target.restored=fail+after=1")]);
    let locks = zdtm_partition(&lab, "file_locks", "fl");
    let pipes = zdtm_partition(&lab, "pipes", "fifo");
    let fl_pid = lab.partitions_on("h1").iter().find(|p| p.spec.name == "fl").and_then(|p| p.pid).expect("fl's pid");
    assert_file_locks_held(&locks, fl_pid, "before the migration");

    for name in ["fl", "fifo"] {
        let t = Instant::now();
        let err = lab.fails(&["migrate", name, "--to", "h2"]);
        eprintln!("{name}: rolled back in {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
        assert!(err.contains(&format!("migrate {name} to h2")) && err.contains("target.restored"), "unclear failure: {err}");
        let p = lab.partitions_on("h1");
        let me = p.iter().find(|p| p.spec.name == name).unwrap_or_else(|| panic!("{name} not on h1: {p:?}"));
        assert_eq!(me.state, "running", "{me:?}");
        lab.wait_clean("h2", Duration::from_secs(10));
    }
    let log = lab.log_of("h1");
    assert!(!log.contains("did not get back all it held"), "the rollback lost something:\n{log}");
    for hit in [1, 2] {
        let fired = format!("fault injected at target.restored (hit {hit})");
        assert!(lab.log_of("h2").contains(&fired), "no {fired:?}:\n{}", lab.log_of("h2"));
    }
    // The very same process holds them again.
    assert_file_locks_held(&locks, fl_pid, "after the rollback");

    assert_eq!(zdtm_verdict(&lab, "fifo", "h1", &pipes), "PASS\n", "pipes after the rollback: {}", lab.ok(&["partition", "logs", "fifo"]));
    // The locks still move once the target lets the migration through.
    let out = lab.ok(&["migrate", "fl", "--to", "h2", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["outcome"]["result"], serde_json::json!("completed"), "report: {r}");
    let on_h2 = lab.partitions_on("h2").iter().find(|p| p.spec.name == "fl").and_then(|p| p.pid).expect("fl on h2");
    assert_file_locks_held(&locks, on_h2, "on h2");
    assert_eq!(zdtm_verdict(&lab, "fl", "h2", &locks), "PASS\n", "file_locks on h2: {}", lab.ok(&["partition", "logs", "fl"]));
    eprintln!("rollback with locks and a fifo: {:.1} s", t0.elapsed().as_secs_f64());
}

/// The target's lpmd dies right after "running", while the partition's
/// memory is still being filled from its page store: the fill, a process
/// of its own, goes on, and every page of the partition is right (a fill
/// on a thread of lpmd would have left the rest reading as zero). The
/// restarted lpmd adopts the partition: it runs on, listed on h2.
#[test]
fn target_crash_after_go_leaves_the_fill_running() {
    let t0 = Instant::now();
    // Killed once the answer "running" is sent, before the migration is
    // settled on h2.
    let lab = TestLab::up_with("fgo", 2, &[("LPM_FAULT", "h2:target.finish=kill")]);
    let bin = lab.dir.join("dirtier");
    let cc = Command::new("gcc").args(["-O2", "-o"]).arg(&bin).arg(DIRTIER).output().expect("run gcc");
    assert!(cc.status.success(), "gcc dirtier.c: {}", String::from_utf8_lossy(&cc.stderr));
    let vol = lab.dir.to_string_lossy().into_owned();
    let bin = bin.to_string_lossy().into_owned();
    lab.ok(&["partition", "create", "dm", "--host", "h1", "--memory", "400M", "--volume", &vol, "--", &bin, "256", "0"]);
    let console = lab.dir.join("partitions").join("dm").join("console.log");
    let wait_console = |what: &str| {
        let t = Instant::now();
        loop {
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            if log.contains(what) {
                return log;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "dm never printed {what:?}: {log}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_console("ready");
    let h2_pid = lab.lab().host("h2").unwrap().pid.unwrap();

    let out = lab.ok(&["migrate", "dm", "--to", "h2", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["outcome"]["result"], serde_json::json!("completed"), "report: {r}");
    let log = lab.log_of("h2");
    assert!(log.contains("fault injected") && log.contains("target.finish"), "the fault did not fire:\n{log}");
    let t = Instant::now();
    while Path::new(&format!("/proc/{h2_pid}/cwd")).exists() {
        assert!(t.elapsed() < Duration::from_secs(5), "h2's lpmd {h2_pid} survived its fault");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The fill ends by itself, and says so in the log it shared with lpmd.
    lab.wait_for_log("h2", "lazy fill done", Duration::from_secs(30));
    // Its init, the first process of its cgroup on h2.
    let ctx = HostCtx { host: "h2".into(), dir: lab.dir.clone(), bridge: "lpmbr0".into(), prefix: lab.lab().prefix() };
    let procs = Layout::current().unwrap().v2_root().join(ctx.cgroup_rel("dm")).join("cgroup.procs");
    let procs = std::fs::read_to_string(&procs).unwrap_or_else(|e| panic!("{}: {e}", procs.display()));
    let pid: i32 = procs.lines().next().and_then(|l| l.parse().ok()).unwrap_or_else(|| panic!("dm runs nothing on h2: {procs:?}"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1).unwrap();
    let log = wait_console("verify 1 ");
    let verdict = log.lines().rfind(|l| l.starts_with("verify 1 ")).unwrap_or_default().to_string();
    assert!(verdict.starts_with("verify 1 OK"), "dm's memory after h2's lpmd died: {verdict}");

    // A new lpmd takes it back: running, listed on h2, the migration
    // settled there.
    lab.lab().restart("h2").expect("restart h2's lpmd");
    assert!(Path::new(&format!("/proc/{pid}")).exists(), "the restarted lpmd ended dm ({pid})");
    let on_h2 = lab.partitions_on("h2");
    assert!(
        on_h2.iter().any(|p| p.spec.name == "dm" && p.state == "running" && p.pid == Some(pid)),
        "h2 does not list dm as running with pid {pid}: {on_h2:?}"
    );
    let Response::Migrations(m) = lab.call("h2", &Request::Migrations { all: false }).unwrap() else { panic!() };
    assert!(m.is_empty(), "h2 has unsettled migrations after its restart: {m:?}");
    eprintln!("{verdict}; {:.1} s", t0.elapsed().as_secs_f64());
}

/// Only the two hosts of a migration speak about it: a host that holds
/// the cluster's key (on insecure hosts any key holder may call itself
/// anything; with TLS its certificate names it) but is not the
/// migration's peer gets no answer about it, live or settled, and its
/// Decision moves nothing: the connection is closed with the refusal
/// logged by name. The peer itself is answered. h2 waits 20 s after its
/// restore (a fault point), so the migration is live there when asked;
/// the movers' timeout is longer than that, so the source waits for it.
#[test]
fn a_host_outside_a_migration_cannot_steer_it() {
    use lpm_migrate::handover::{Decision, PeerState};
    let env = [("LPM_FAULT", "h2:target.restored=sleep=20000"), ("LPM_MOVER_TIMEOUT_MS", "120000")];
    let lab = TestLab::up_insecure_with("fpeer", 2, &env);
    create_service(&lab, "kv", "h1", 8);
    wait_log(&lab, "kv", "listening");
    let l = lab.lab();
    let target: SocketAddr = l.host("h2").unwrap().listen.into();
    let key = lpm_agent::client::read_key(&l.key_path()).unwrap();
    let h1 = l.netns_of("h1").unwrap().fd().unwrap();
    // One connection to h2's mover as `name`, one message, the answer
    // (None: closed without one).
    let ask = |name: &str, m: &Mover| -> Option<Mover> {
        lpm_sys::net::in_netns(h1.as_fd(), || {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(5)).expect("reach h2's mover");
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            lpm_wire::handshake(&mut s, Role::Opener, &key, name).expect("the key's handshake");
            lpm_agent::api::send(&mut s, m).unwrap();
            match frame(&mut s) {
                Some(f) if f.kind == FrameType::Control => Some(lpm_agent::api::decode::<Mover>(&f.payload, "answer").unwrap()),
                _ => None,
            }
        })
        .unwrap()
    };
    let status = |id: &str| Mover::Status { id: id.to_string(), state: PeerState::Unknown, reply: true };
    std::thread::scope(|sc| {
        let moving = sc.spawn(|| lab.migrate("kv", "h2"));
        lab.wait_for_log("h2", "fault injected", Duration::from_secs(120));
        let Response::Migrations(m) = lab.call("h2", &Request::Migrations { all: false }).unwrap() else { panic!("no migrations") };
        assert_eq!(m.len(), 1, "{m:?}");
        let id = m[0].record.id.clone();
        let go = Mover::Decision { id: id.clone(), decision: Decision::Go, why: String::new() };
        assert!(ask("intruder", &go).is_none(), "h2 answered a Decision of a host outside migration {id}");
        assert!(ask("intruder", &status(&id)).is_none(), "h2 told a host outside migration {id} its state");
        lab.wait_for_log("h2", "not the migration's peer", Duration::from_secs(5));
        match moving.join().unwrap() {
            common::lab::Moved::Completed(_) => {}
            common::lab::Moved::Failed(why) => panic!("the migration failed: {why}"),
        }
        // Settled: still nothing for the intruder, the peer's answer for h1.
        assert!(ask("intruder", &status(&id)).is_none(), "h2 told a host outside settled migration {id} its state");
        match ask("h1", &status(&id)) {
            Some(Mover::Status { id: got, state: PeerState::Target { .. }, .. }) => assert_eq!(got, id),
            other => panic!("h2 did not answer its peer about {id}: {other:?}"),
        }
    });
}
