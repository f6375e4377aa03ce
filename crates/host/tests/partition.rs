//! The partition runtime on the real kernel, as root.
//!
//! Every test runs in a network namespace of its own that it creates (its
//! "host"), with a bridge there, so no bridge, veth or address ever touches
//! the root namespace. Names carry the test process's pid and a counter.
//! The guard tears everything down also when an assertion fails.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lpm_host::cgroup::{Cgroup, CgroupError, Layout, Limits};
use lpm_host::net::{self, Netns};
use lpm_host::partition::{self, HostCtx, PartitionError, PartitionSpec, Plumbing};
use rustix::process::{Pid, WaitOptions};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique tag for this test: `lpmt-PID-N`.
fn unique() -> String {
    format!("lpmt-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

/// The bridge side's address; partitions get .10, .11, ...
const BRIDGE_IP: &str = "10.213.1.1/24";
const PORT: u16 = 7000;

/// A test host: its own network namespace with a partition bridge, its own
/// cgroup prefix and state directory. Dropping it removes all of it and
/// reaps the partition inits it was told about.
struct TestHost {
    ns: String,
    ctx: HostCtx,
    pids: Vec<i32>,
}

impl TestHost {
    fn new() -> TestHost {
        let tag = unique();
        let ns = format!("{tag}-host");
        let dir = std::env::temp_dir().join(&tag);
        let host =
            TestHost { ns: ns.clone(), ctx: HostCtx { host: "h1".into(), dir, bridge: "lpmbr0".into(), prefix: tag }, pids: Vec::new() };
        Netns::create(&ns).expect("create the test's host netns");
        net::ip(Some(&ns), &["link", "add", "lpmbr0", "type", "bridge"]).unwrap();
        net::ip(Some(&ns), &["addr", "add", BRIDGE_IP, "dev", "lpmbr0"]).unwrap();
        net::ip(Some(&ns), &["link", "set", "lpmbr0", "up"]).unwrap();
        net::ip(Some(&ns), &["link", "set", "lo", "up"]).unwrap();
        host
    }

    /// Runs `f` on a thread that lives in the test host's netns, as lpmd
    /// lives in its host's.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = Netns::open(&self.ns).unwrap().fd().unwrap();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                rustix::thread::move_into_link_name_space(fd.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                    .expect("setns into the test host netns");
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    fn spec(&self, name: &str, command: &[&str]) -> PartitionSpec {
        PartitionSpec {
            name: name.into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            memory: Some(256 << 20),
            cpus: Some(0.5),
            rt_runtime_us: None,
            ip: Some("10.213.1.10/24".into()),
            mac: None,
            volumes: vec![],
            isolation: Default::default(),
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Kills every partition process of this test and removes the
        // cgroups; then the inits are our zombies to reap.
        if let Ok(cg) = Cgroup::open(&self.ctx.prefix) {
            if let Err(e) = cg.remove() {
                eprintln!("cleanup: {e}");
            }
        }
        for pid in &self.pids {
            let _ = rustix::process::waitpid(Pid::from_raw(*pid), WaitOptions::NOHANG);
        }
        for name in Netns::list().unwrap_or_default() {
            if name.starts_with(&self.ctx.prefix) {
                let _ = Netns::delete(&name);
            }
        }
        let _ = fs::remove_dir_all(&self.ctx.dir);
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn ns_link(pid: &str, kind: &str) -> String {
    fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap().to_string_lossy().into_owned()
}

/// Reaps our child `pid` and returns the signal that killed it, if any.
fn reap(pid: i32) -> Option<i32> {
    let (_, st) = rustix::process::waitpid(Pid::from_raw(pid), WaitOptions::empty()).unwrap().expect("status");
    st.terminating_signal()
}

fn connect(addr: &str) -> std::io::Result<String> {
    let addr: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// A partition program: prints its pid and host name, starts a child,
/// serves TCP on PORT, then prints a tick every 20 ms.
const PROGRAM: &str = r#"
import os, socket, subprocess, threading, time
print("init pid", os.getpid(), "host", socket.gethostname(), flush=True)
kid = subprocess.Popen(["sleep", "1000"])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", 7000))
srv.listen(16)
def serve():
    while True:
        c, _ = srv.accept()
        c.sendall(b"hello from " + socket.gethostname().encode() + b"\n")
        c.close()
threading.Thread(target=serve, daemon=True).start()
print("ready kid", kid.pid, flush=True)
n = 0
while True:
    n += 1
    print("tick", n, flush=True)
    time.sleep(0.02)
"#;

#[test]
fn cgroup_life_cycle() {
    let rel = format!("{}/cg", unique());
    let layout = Layout::current().unwrap().clone();
    let cg = Cgroup::create(&rel, Limits { memory: Some(64 << 20), cpus: Some(0.5), rt_runtime_us: None }).unwrap();
    let mut child = std::process::Command::new("sleep").arg("100").spawn().unwrap();
    let pid = child.id() as i32;
    let cleanup = Guard(rel.split('/').next().unwrap().to_string());

    let dirs = cg.dirs();
    assert_eq!(dirs[0], cg.v2_dir());
    assert!(dirs.iter().all(|d| d.is_dir()), "{dirs:?}");
    if let Layout::Hybrid { memory, cpu, .. } = &layout {
        assert_eq!(dirs.len(), if memory == cpu { 2 } else { 3 });
        assert_eq!(read(memory.join(&rel).join("memory.limit_in_bytes")).trim(), (64u64 << 20).to_string());
        assert_eq!(read(cpu.join(&rel).join("cpu.cfs_quota_us")).trim(), "50000");
        assert_eq!(read(cpu.join(&rel).join("cpu.cfs_period_us")).trim(), "100000");
    } else {
        assert_eq!(read(cg.v2_dir().join("memory.max")).trim(), (64u64 << 20).to_string());
        assert_eq!(read(cg.v2_dir().join("cpu.max")).trim(), "50000 100000");
    }
    assert_eq!(cg.cpus().unwrap(), Some(0.5));

    assert!(!cg.populated().unwrap());
    cg.add(pid).unwrap();
    assert_eq!(cg.procs().unwrap(), vec![pid]);
    assert!(cg.populated().unwrap());
    let own = read(format!("/proc/{pid}/cgroup"));
    assert!(own.lines().any(|l| l == format!("0::/{rel}")), "{own}");
    if let Layout::Hybrid { .. } = layout {
        for ctl in ["memory", "cpu"] {
            let line = own.lines().find(|l| l.split(':').nth(1).is_some_and(|c| c.split(',').any(|c| c == ctl))).unwrap();
            assert!(line.ends_with(&format!(":/{rel}")), "{line}");
        }
    }
    // v1 does not move the charges of a migrated task, so only readable.
    cg.memory_current().unwrap();

    // Auto-converge throttling and lifting it.
    cg.set_cpus(Some(0.25)).unwrap();
    assert_eq!(cg.cpus().unwrap(), Some(0.25));
    cg.set_cpus(None).unwrap();
    assert_eq!(cg.cpus().unwrap(), None);
    assert!(matches!(cg.set_cpus(Some(0.001)), Err(CgroupError::BadLimit { .. })));

    cg.freeze(Duration::from_secs(5)).unwrap();
    assert!(cg.frozen().unwrap());
    cg.thaw(Duration::from_secs(5)).unwrap();
    assert!(!cg.frozen().unwrap());

    match Cgroup::create(&rel, Limits::default()) {
        Err(e @ CgroupError::Exists { .. }) => assert!(e.to_string().contains(&rel), "{e}"),
        other => panic!("second create: {other:?}"),
    }
    let opened = Cgroup::open(&rel).unwrap();
    assert_eq!(opened.dirs(), cg.dirs());

    // Removing a frozen cgroup still kills and empties it.
    cg.freeze(Duration::from_secs(5)).unwrap();
    cg.remove().unwrap();
    assert_eq!(child.wait().unwrap().code(), None, "sleep was killed");
    assert!(cg.dirs().iter().all(|d| !d.exists()));
    cg.remove().unwrap();
    match Cgroup::open(&rel) {
        Err(e @ CgroupError::NotFound { .. }) => assert!(e.to_string().contains(&rel), "{e}"),
        other => panic!("open after remove: {other:?}"),
    }
    drop(cleanup);
    assert!(!Layout::current().unwrap().v2_root().join(rel.split('/').next().unwrap()).exists());
}

/// Removes a cgroup prefix on drop.
/// A real-time budget is added to every ancestor's, given back when the
/// cgroup goes, and lets a thread of the cgroup be made SCHED_FIFO; a
/// budget larger than what is left is refused by name, leaving the
/// ancestors as they were.
#[test]
fn cgroup_real_time_budget() {
    let top = unique();
    let _cleanup = Guard(top.clone());
    let layout = Layout::current().unwrap().clone();
    let cpu_root = match &layout {
        Layout::Hybrid { cpu, .. } => cpu.clone(),
        Layout::Unified { root } => root.clone(),
    };
    // Where the kernel budgets real-time time per group (cgroup v1's cpu
    // controller, or v2 with real-time group scheduling).
    let budgets = cpu_root.join("cpu.rt_runtime_us").exists();
    let rt = |rel: &str| read(cpu_root.join(rel).join("cpu.rt_runtime_us")).trim().to_string();
    let a = Cgroup::create(&format!("{top}/h/a"), Limits { rt_runtime_us: Some(100_000), ..Default::default() }).unwrap();
    if budgets {
        assert_eq!((rt(&top), rt(&format!("{top}/h")), rt(&format!("{top}/h/a"))), ("100000".into(), "100000".into(), "100000".into()));
    }
    assert_eq!(a.limits().unwrap().rt_runtime_us, budgets.then_some(100_000));
    let fifo = |cg: &Cgroup| {
        let mut child = std::process::Command::new("sleep").arg("100").spawn().unwrap();
        cg.add(child.id() as i32).unwrap();
        let out = std::process::Command::new("chrt").args(["-f", "-p", "10", &child.id().to_string()]).output().expect("run chrt");
        let policy = read(format!("/proc/{}/stat", child.id())).rsplit(')').next().unwrap().split_whitespace().nth(38).unwrap().to_string();
        child.kill().unwrap();
        child.wait().unwrap();
        (out.status.success(), policy, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, policy, err) = fifo(&a);
    assert!(ok && policy == "1", "chrt -f in a cgroup with a budget: policy {policy}: {err}");
    if budgets {
        let none = Cgroup::create(&format!("{top}/h/none"), Limits::default()).unwrap();
        let (ok, _, _) = fifo(&none);
        assert!(!ok, "a thread was made SCHED_FIFO in a cgroup without a real-time budget");
        none.remove().unwrap();
        let e = Cgroup::create(&format!("{top}/h/big"), Limits { rt_runtime_us: Some(900_000), ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("real-time budget of 900000 us"), "{e}");
        assert_eq!((rt(&top), rt(&format!("{top}/h"))), ("100000".into(), "100000".into()), "the refused budget was left behind");
    }
    a.remove().unwrap();
    if budgets {
        assert_eq!((rt(&top), rt(&format!("{top}/h"))), ("0".into(), "0".into()), "the budget was not given back");
    }
}

struct Guard(String);
impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(cg) = Cgroup::open(&self.0) {
            if let Err(e) = cg.remove() {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

#[test]
fn partition_runs_isolated_and_controlled() {
    let mut host = TestHost::new();
    let spec = host.spec("web", &["python3", "-c", PROGRAM]);
    let ctx = host.ctx.clone();
    let plumbing = host.run(|| Plumbing::create(&ctx, &spec, true)).unwrap();
    let pid = partition::start(&ctx, &spec, &plumbing).unwrap();
    host.pids.push(pid);
    let log = ctx.console_log("web");
    wait_for("the partition to be ready", Duration::from_secs(10), || fs::read_to_string(&log).unwrap_or_default().contains("ready"));
    let out = read(&log);

    // Its own pid namespace, pid 1 there, and the program saw that too.
    let status = read(format!("/proc/{pid}/status"));
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(nspid.split_whitespace().skip(1).collect::<Vec<_>>(), vec![pid.to_string(), "1".into()], "{nspid}");
    assert!(out.contains("init pid 1 host web"), "{out}");

    // Own namespaces; net is the partition's named one.
    let p = pid.to_string();
    for kind in ["pid", "mnt", "uts", "ipc", "net"] {
        assert_ne!(ns_link(&p, kind), ns_link("thread-self", kind), "{kind} namespace shared with the host");
    }
    let netns_ino = fs::metadata(plumbing.netns().path()).unwrap().ino();
    assert_eq!(ns_link(&p, "net"), format!("net:[{netns_ino}]"));

    // /proc inside shows exactly the partition's processes.
    let inner: BTreeSet<String> = plumbing
        .cgroup()
        .procs()
        .unwrap()
        .iter()
        .map(|hp| {
            read(format!("/proc/{hp}/status")).lines().find(|l| l.starts_with("NSpid:")).unwrap().rsplit('\t').next().unwrap().to_string()
        })
        .collect();
    let seen: BTreeSet<String> = fs::read_dir(format!("/proc/{pid}/root/proc"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert_eq!(seen, inner);
    assert_eq!(inner.len(), 2, "init and its sleep: {inner:?}");
    assert!(inner.contains("1"));

    // eth0 with the address and the derived MAC; limits in the cgroup.
    let ns = plumbing.netns().name();
    let addr = net::ip(Some(ns), &["-o", "addr", "show", "dev", "eth0"]).unwrap();
    assert!(addr.contains("inet 10.213.1.10/24"), "{addr}");
    let link = net::ip(Some(ns), &["-o", "link", "show", "dev", "eth0"]).unwrap();
    assert!(link.contains(&format!("link/ether {}", spec.mac_address().unwrap())), "{link}");
    assert!(spec.mac_address().unwrap().starts_with("02:"));
    let cg = plumbing.cgroup();
    assert_eq!(cg.cpus().unwrap(), Some(0.5));
    match Layout::current().unwrap() {
        Layout::Hybrid { memory, .. } => {
            assert_eq!(read(memory.join(cg.rel()).join("memory.limit_in_bytes")).trim(), (256u64 << 20).to_string())
        }
        Layout::Unified { root } => assert_eq!(read(root.join(cg.rel()).join("memory.max")).trim(), (256u64 << 20).to_string()),
    }
    let own = read(format!("/proc/{pid}/cgroup"));
    assert!(own.lines().any(|l| l == format!("0::/{}", ctx.cgroup_rel("web"))), "{own}");
    assert!(cg.memory_current().unwrap() > 1 << 20);

    // Freeze stops the ticks, thaw resumes them.
    cg.freeze(Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let frozen_len = fs::metadata(&log).unwrap().len();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fs::metadata(&log).unwrap().len(), frozen_len, "log grew while frozen");
    cg.thaw(Duration::from_secs(5)).unwrap();
    wait_for("ticks after thaw", Duration::from_secs(3), || fs::metadata(&log).unwrap().len() > frozen_len);

    // The network: reachable from the bridge, cut off while locked.
    let target = format!("10.213.1.10:{PORT}");
    host.run(|| {
        wait_for("a connection to the partition", Duration::from_secs(5), || connect(&target).is_ok());
        assert_eq!(connect(&target).unwrap(), "hello from web\n");
        plumbing.lock_network().unwrap();
        assert!(connect(&target).is_err(), "connected while locked");
        // Locked off the bridge, not down: the partition's link keeps its
        // carrier (no netlink event inside).
        let link = net::ip(Some(ns), &["-o", "link", "show", "dev", "eth0"]).unwrap();
        assert!(!link.contains("NO-CARRIER"), "{link}");
        plumbing.unlock_network().unwrap();
        wait_for("a connection after unlock", Duration::from_secs(5), || connect(&target).is_ok());
        plumbing.announce().unwrap();
    });

    // python3 as pid 1 has no SIGTERM handler, so it ignores SIGTERM: stop
    // must fall back to killing the whole tree.
    let t = Instant::now();
    assert!(!partition::stop(pid, &plumbing, Duration::from_millis(300)).unwrap(), "SIGTERM should not have sufficed");
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert!(!cg.populated().unwrap());
    assert!(cg.procs().unwrap().is_empty());
    assert_eq!(reap(pid), Some(libc::SIGKILL));
    host.pids.clear();

    let veth = plumbing.veth().to_string();
    host.run(|| {
        plumbing.destroy().unwrap();
        plumbing.destroy().unwrap();
        let links = net::ip(None, &["-o", "link", "show"]).unwrap();
        assert!(!links.contains(&veth), "{links}");
    });
    assert!(!Netns::list().unwrap().contains(&ctx.netns_name("web")));
    assert!(cg.dirs().iter().all(|d| !d.exists()), "{:?}", cg.dirs());
}

#[test]
fn graceful_stop_and_start_failures() {
    let mut host = TestHost::new();
    let ctx = host.ctx.clone();
    // A shell init that handles SIGTERM: stop returns as soon as it exits,
    // and the kernel takes its background child with it.
    let mut spec = host.spec("sh", &["sh", "-c", "trap 'echo bye; exit 0' TERM; sleep 1000 & echo up $$ $(hostname); wait"]);
    spec.ip = None;
    let plumbing = host.run(|| Plumbing::create(&ctx, &spec, false)).unwrap();
    let pid = partition::start(&ctx, &spec, &plumbing).unwrap();
    host.pids.push(pid);
    let log = ctx.console_log("sh");
    wait_for("the shell to be up", Duration::from_secs(5), || fs::read_to_string(&log).unwrap_or_default().contains("up 1 sh"));
    wait_for("the shell and its child", Duration::from_secs(5), || plumbing.cgroup().procs().unwrap().len() == 2);
    // Only stdio survived into the init: /dev/null and the console log.
    let fds: Vec<(String, PathBuf)> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().into_string().unwrap(), fs::read_link(e.path()).unwrap()))
        .collect::<std::collections::BTreeMap<_, _>>()
        .into_iter()
        .collect();
    assert_eq!(fds, vec![("0".to_string(), PathBuf::from("/dev/null")), ("1".to_string(), log.clone()), ("2".to_string(), log.clone())]);
    let t = Instant::now();
    assert!(partition::stop(pid, &plumbing, Duration::from_secs(5)).unwrap(), "SIGTERM should have sufficed");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert_eq!(reap(pid), None);
    host.pids.clear();
    assert!(read(&log).contains("bye"));
    assert!(!plumbing.cgroup().populated().unwrap());

    // The program is found in the parent: a missing one fails before clone.
    let missing = PartitionSpec { command: vec!["no-such-program-lpm".into()], ..spec.clone() };
    let e = partition::start(&ctx, &missing, &plumbing).unwrap_err();
    let msg = format!("{e}: {}", std::error::Error::source(&e).unwrap());
    assert!(msg.contains("no-such-program-lpm") && msg.contains("partition sh"), "{msg}");

    // A path that execve refuses: the child's report names the step and
    // the errno, and nothing is left running.
    let plain = ctx.dir.join("not-a-program");
    fs::write(&plain, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();
    let noexec = PartitionSpec { command: vec![plain.to_string_lossy().into_owned()], ..spec.clone() };
    let e = partition::start(&ctx, &noexec, &plumbing).unwrap_err();
    let src = std::error::Error::source(&e).unwrap();
    assert!(src.to_string().contains("execve"), "{src}");
    assert_eq!(
        std::error::Error::source(src).and_then(|s| s.downcast_ref::<std::io::Error>()).and_then(|e| e.raw_os_error()),
        Some(libc::EACCES)
    );
    assert!(!plumbing.cgroup().populated().unwrap());

    // Plumbing made with the link down: the host end is down, open() finds
    // everything again.
    host.run(|| {
        let link = net::ip(None, &["-o", "link", "show", "dev", plumbing.veth()]).unwrap();
        assert!(!link.contains("master"), "a locked partition's veth is on a bridge: {link}");
        let again = Plumbing::open(&ctx, &spec).unwrap();
        assert_eq!(again.veth(), plumbing.veth());
        assert_eq!(again.cgroup().dirs(), plumbing.cgroup().dirs());
        // A second partition of the same name on this host clashes.
        assert!(Plumbing::create(&ctx, &spec, false).is_err());
        again.destroy().unwrap();
        assert!(Plumbing::open(&ctx, &spec).is_err());
    });
}

#[test]
fn bad_specs_name_the_field() {
    let host = TestHost::new();
    let good = host.spec("ok-1", &["sh", "-c", "true"]);
    good.validate().unwrap();
    let vol = host.ctx.dir.join("vol");
    fs::create_dir_all(&vol).unwrap();
    let file = host.ctx.dir.join("file");
    fs::write(&file, "x").unwrap();
    PartitionSpec { volumes: vec![vol], ..good.clone() }.validate().unwrap();

    let cases: Vec<(&str, PartitionSpec)> = vec![
        ("name", PartitionSpec { name: "".into(), ..good.clone() }),
        ("name", PartitionSpec { name: "Web".into(), ..good.clone() }),
        ("name", PartitionSpec { name: "a_b".into(), ..good.clone() }),
        ("name", PartitionSpec { name: "x".repeat(33), ..good.clone() }),
        ("command", PartitionSpec { command: vec![], ..good.clone() }),
        ("command", PartitionSpec { command: vec!["".into()], ..good.clone() }),
        ("command", PartitionSpec { command: vec!["sh".into(), "a\0b".into()], ..good.clone() }),
        ("memory", PartitionSpec { memory: Some(0), ..good.clone() }),
        ("memory", PartitionSpec { memory: Some(partition::MIN_MEMORY - 1), ..good.clone() }),
        ("cpus", PartitionSpec { cpus: Some(0.0), ..good.clone() }),
        ("cpus", PartitionSpec { cpus: Some(f64::NAN), ..good.clone() }),
        ("ip", PartitionSpec { ip: Some("10.213.1.10".into()), ..good.clone() }),
        ("ip", PartitionSpec { ip: Some("10.213.1.300/24".into()), ..good.clone() }),
        ("ip", PartitionSpec { ip: Some("10.213.1.10/33".into()), ..good.clone() }),
        ("mac", PartitionSpec { mac: Some("02:00:00:00:00".into()), ..good.clone() }),
        ("mac", PartitionSpec { mac: Some("02:00:00:00:00:zz".into()), ..good.clone() }),
        ("mac", PartitionSpec { mac: Some("01:00:5e:00:00:01".into()), ..good.clone() }),
        ("volumes", PartitionSpec { volumes: vec![PathBuf::from("/no/such/dir/lpm")], ..good.clone() }),
        ("volumes", PartitionSpec { volumes: vec![file], ..good.clone() }),
        ("volumes", PartitionSpec { volumes: vec![PathBuf::from("relative")], ..good.clone() }),
    ];
    for (field, spec) in cases {
        match spec.validate() {
            Err(e @ PartitionError::Spec { field: f, .. }) => {
                assert_eq!(f, field, "{e}");
                assert!(e.to_string().contains(field), "{e}");
            }
            other => panic!("{field}: {spec:?} gave {other:?}"),
        }
        // Plumbing refuses it before creating anything.
        assert!(matches!(Plumbing::create(&host.ctx, &spec, false), Err(PartitionError::Spec { .. })));
    }
    assert!(!Netns::list().unwrap().iter().any(|n| n.starts_with(&host.ctx.prefix) && *n != host.ns));
    assert!(Cgroup::open(&host.ctx.prefix).is_err());

    // The spec round-trips through JSON; absent optional fields default.
    let json = serde_json::to_string(&good).unwrap();
    assert_eq!(serde_json::from_str::<PartitionSpec>(&json).unwrap(), good);
    let minimal: PartitionSpec = serde_json::from_str(r#"{"name":"m","command":["sh"]}"#).unwrap();
    assert_eq!((minimal.memory, minimal.ip, minimal.volumes.len()), (None, None, 0));
}

/// The unified-layout code (subtree_control, cgroup2-only files) on this
/// machine's cgroup2 mount. On a hybrid host that mount has no memory or cpu
/// controller, so a limit must fail naming the missing file; on a unified
/// host the limits must land.
#[test]
fn unified_layout_on_the_cgroup2_mount() {
    let layout = Layout::Unified { root: Layout::current().unwrap().v2_root().to_path_buf() };
    let top = unique();
    let _cleanup = UnifiedGuard(layout.clone(), top.clone());
    let rel = format!("{top}/h/p");
    let cg = Cgroup::create_in(layout.clone(), &rel, Limits::default()).unwrap();
    assert_eq!(cg.dirs(), vec![cg.v2_dir()]);
    let mut child = std::process::Command::new("sleep").arg("100").spawn().unwrap();
    cg.add(child.id() as i32).unwrap();
    assert_eq!(cg.procs().unwrap(), vec![child.id() as i32]);
    cg.freeze(Duration::from_secs(5)).unwrap();
    cg.thaw(Duration::from_secs(5)).unwrap();
    cg.kill().unwrap();
    assert_eq!(child.wait().unwrap().code(), None);
    cg.wait_empty(Duration::from_secs(5)).unwrap();

    let controllers = read(layout.v2_root().join("cgroup.controllers"));
    let limited =
        Cgroup::create_in(layout.clone(), &format!("{top}/h/q"), Limits { memory: Some(64 << 20), cpus: Some(1.5), rt_runtime_us: None });
    if controllers.split_whitespace().any(|c| c == "memory") && controllers.split_whitespace().any(|c| c == "cpu") {
        let q = limited.unwrap();
        assert_eq!(read(q.v2_dir().join("memory.max")).trim(), (64u64 << 20).to_string());
        assert_eq!(q.cpus().unwrap(), Some(1.5));
        let parent_ctl = read(layout.v2_root().join(&top).join("h").join("cgroup.subtree_control"));
        assert!(parent_ctl.contains("memory") && parent_ctl.contains("cpu"), "{parent_ctl}");
    } else {
        let e = limited.unwrap_err();
        assert!(e.to_string().contains("memory.max"), "{e}");
        // The failed create left nothing behind.
        assert!(!layout.v2_root().join(&top).join("h/q").exists());
    }
    Cgroup::open_in(layout.clone(), &top).unwrap().remove().unwrap();
    assert!(!layout.v2_root().join(&top).exists());
}

struct UnifiedGuard(Layout, String);
impl Drop for UnifiedGuard {
    fn drop(&mut self) {
        if let Ok(cg) = Cgroup::open_in(self.0.clone(), &self.1) {
            let _ = cg.remove();
        }
    }
}

/// A failure in the child before exec comes back naming its step: here the
/// "network namespace" descriptor is /dev/null, which setns refuses.
#[test]
fn child_step_failure_is_reported() {
    use lpm_sys::spawn::{spawn_partition, PartitionExec, SpawnError};
    use std::ffi::CString;
    let null = fs::File::open("/dev/null").unwrap();
    let exec = PartitionExec {
        argv: vec![CString::new("true").unwrap()],
        envp: vec![],
        cwd: CString::new("/").unwrap(),
        hostname: CString::new("x").unwrap(),
        netns: null.as_fd(),
        cgroup_v2: None,
        stdin: null.as_fd(),
        stdout: null.as_fd(),
        stderr: null.as_fd(),
        masks: vec![],
        caps: None,
        userns: None,
    };
    let child = spawn_partition(&exec).unwrap();
    let pid = child.pid();
    match child.go() {
        Err(SpawnError::Child { pid: p, step, source }) => {
            assert_eq!(p, pid);
            assert!(step.contains("setns"), "{step}");
            assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
        }
        other => panic!("{other:?}"),
    }
    // Reaped by go(): no such child any more.
    assert!(rustix::process::waitpid(Pid::from_raw(pid), WaitOptions::NOHANG).is_err());
}

/// `stop` of an init that ignores SIGTERM kills the tree through
/// cgroup.kill; a `start` afterwards gets an init that lives. (On this
/// kernel a cgroup killed through cgroup.kill kills, at birth, every
/// child later cloned into it with CLONE_INTO_CGROUP: stop replaces the
/// cgroup, with its limits.) Twice over, and the limits stay.
#[test]
fn partition_killed_by_stop_starts_again() {
    let mut host = TestHost::new();
    let ctx = host.ctx.clone();
    // sh as pid 1 with no handler for SIGTERM ignores it.
    let mut spec = host.spec("stubborn", &["sh", "-c", "echo up $$; while :; do sleep 1; done"]);
    spec.ip = None;
    let plumbing = host.run(|| Plumbing::create(&ctx, &spec, false)).unwrap();
    let log = ctx.console_log("stubborn");
    for round in 1..=3 {
        let pid = partition::start(&ctx, &spec, &plumbing).unwrap();
        host.pids.push(pid);
        // Killed at birth, the init would never print this.
        wait_for(&format!("start {round} to run its program"), Duration::from_secs(5), || read(&log).matches("up 1").count() == round);
        assert!(
            rustix::process::waitpid(Pid::from_raw(pid), WaitOptions::NOHANG).unwrap().is_none(),
            "start {round}: the init died: {}",
            read(&log)
        );
        assert_eq!(plumbing.cgroup().procs().unwrap().len(), 2, "start {round}: the init and its sleep");
        assert_eq!(plumbing.cgroup().cpus().unwrap(), Some(0.5), "start {round}: the cpu limit");
        assert_eq!(plumbing.cgroup().memory_limit().unwrap(), Some(256 << 20), "start {round}: the memory limit");
        assert!(!partition::stop(pid, &plumbing, Duration::from_millis(100)).unwrap(), "SIGTERM should not have sufficed");
        assert_eq!(reap(pid), Some(libc::SIGKILL));
        host.pids.clear();
    }
}

/// Runs a python3 that waits for a line, then allocates and touches
/// `mib` MiB and answers "held"; killed and reaped on drop.
struct Hog(std::process::Child);

impl Hog {
    fn start() -> Hog {
        let code = "import sys\nmib = int(sys.stdin.readline())\nb = b'x' * (mib << 20)\nprint('held', flush=True)\nsys.stdin.readline()\n";
        let c = std::process::Command::new("python3")
            .args(["-c", code])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start python3");
        Hog(c)
    }

    /// Allocates once the process is in its cgroup: a v1 memory cgroup
    /// charges only what is allocated after the move.
    fn hold(&mut self, mib: u64) {
        use std::io::{BufRead, Write};
        writeln!(self.0.stdin.as_mut().unwrap(), "{mib}").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(self.0.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "held");
    }
}

impl Drop for Hog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A host cgroup limited to 300 MiB and 0.75 CPUs, holding a partition
/// that uses 40 MiB: the headroom is at most 300 MiB minus the host
/// cgroup's usage, names that limit, and the CPUs are 0.75. A lower limit
/// on an ancestor binds instead, named; with no limit anywhere the
/// machine binds (MemAvailable, online CPUs).
#[test]
fn headroom_is_what_the_host_cgroups_allow() {
    let prefix = unique();
    let _cleanup = Guard(prefix.clone());
    let ctx = HostCtx { host: "h1".into(), dir: std::env::temp_dir().join(&prefix), bridge: "lpmbr0".into(), prefix: prefix.clone() };
    let (file, cpu_file) = match Layout::current().unwrap() {
        Layout::Hybrid { .. } => ("memory.limit_in_bytes", "cpu.cfs_quota_us"),
        Layout::Unified { .. } => ("memory.max", "cpu.max"),
    };

    // No limit anywhere: the machine.
    let free = ctx.headroom().unwrap();
    eprintln!("unlimited: {free}");
    let online = fs::read_to_string("/sys/devices/system/cpu/online").unwrap();
    assert!(free.memory_bound.starts_with("MemAvailable"), "{free}");
    assert!(free.cpus_bound.contains("online CPUs") && free.cpus >= 1.0, "{free} ({online})");

    let host_cg =
        Cgroup::create(&ctx.host_cgroup_rel(), Limits { memory: Some(300 << 20), cpus: Some(0.75), rt_runtime_us: None }).unwrap();
    let part = Cgroup::create(&ctx.cgroup_rel("p"), Limits::default()).unwrap();
    let mut hog = Hog::start();
    part.add(hog.0.id() as i32).unwrap();
    hog.hold(40);
    let used = host_cg.memory_current().unwrap();
    let h = ctx.headroom().unwrap();
    let after = host_cg.memory_current().unwrap();
    eprintln!("host cgroup at 300 MiB, {} MiB used: {h}", used >> 20);
    assert!(used >= 40 << 20, "the partition's 40 MiB are not charged to the host cgroup: {used}");
    assert!(h.memory <= (300 << 20) - used.min(after), "{h}");
    assert!(h.memory >= (300 << 20) - used.max(after), "{h}");
    assert!(h.memory <= 260 << 20, "{h}");
    assert!(h.memory_bound.starts_with(&format!("{file} of {}", ctx.host_cgroup_rel())), "{h}");
    assert_eq!(h.cpus, 0.75);
    assert_eq!(h.cpus_bound, format!("{cpu_file} of {} (0.75 CPUs)", ctx.host_cgroup_rel()));

    // The parent ({prefix}) limited below: it binds.
    let top = Cgroup::open(&prefix).unwrap();
    match Layout::current().unwrap() {
        Layout::Hybrid { memory, .. } => fs::write(memory.join(&prefix).join("memory.limit_in_bytes"), (200u64 << 20).to_string()).unwrap(),
        Layout::Unified { root } => fs::write(root.join(&prefix).join("memory.max"), (200u64 << 20).to_string()).unwrap(),
    }
    // (v1 refuses a parent quota below a child's: the host's is lifted.)
    host_cg.set_cpus(None).unwrap();
    top.set_cpus(Some(0.5)).unwrap();
    let h = ctx.headroom().unwrap();
    eprintln!("parent at 200 MiB: {h}");
    assert!(h.memory <= (200 << 20) - (40 << 20), "{h}");
    assert!(h.memory_bound.starts_with(&format!("{file} of {prefix} (200 MiB")), "{h}");
    assert_eq!((h.cpus, h.cpus_bound.as_str()), (0.5, format!("{cpu_file} of {prefix} (0.5 CPUs)").as_str()));
    drop(hog);
}
