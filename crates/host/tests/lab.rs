//! The lab against the real kernel: namespaces, bridges, veths, the stand-in
//! lpmd processes, gratuitous ARP through the bridges, and teardown after a
//! clean run and after a simulated crash.
//!
//! `up` starts a stand-in for lpmd here: a real Python program that reads
//! lpmd's configuration file (`--config`), listens on its `listen` address
//! (which only works inside the host's namespace, where that address
//! exists), creates its `control` socket and answers each connection with
//! its host name and pid.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lpm_host::lab::{Lab, LabError, LabOptions};
use lpm_host::net::{self, Netns};

const STANDIN: &str = r#"
import argparse, os, select, signal, socket, sys, time, tomllib
p = argparse.ArgumentParser()
for a in ("--config", "--note"):
    p.add_argument(a)
p.add_argument("--ignore-term", action="store_true")
p.add_argument("--fail", action="store_true")
a, rest = p.parse_known_args()
# The lab starts lpmd from its configuration file alone.
with open(a.config, "rb") as f:
    for k, v in tomllib.load(f).items():
        setattr(a, k, v)
print("standin", a.host, "pid", os.getpid(), "prefix", a.prefix, "bridge", a.bridge, "args", sys.argv[1:], flush=True)
if a.note:
    with open(a.note, "a") as f:
        f.write(a.prefix + "\n")
if a.fail:
    print("standin refusing to start", file=sys.stderr, flush=True)
    sys.exit(3)
if a.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
key = open(a.key).read().strip()
assert len(key) == 64 and int(key, 16) >= 0, "bad key"
host, port = a.listen.rsplit(":", 1)
t = socket.socket()
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((host, int(port)))
t.listen(16)
u = socket.socket(socket.AF_UNIX)
u.bind(a.control)
u.listen(16)
while True:
    r, _, _ = select.select([t, u], [], [])
    for s in r:
        c, _ = s.accept()
        c.sendall(("%s %d\n" % (a.host, os.getpid())).encode())
        c.close()
"#;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A scratch directory with the stand-in lpmd; on drop, takes down the lab
/// in `lab/` (if any) and removes everything.
struct Scratch {
    base: PathBuf,
}

impl Scratch {
    fn new() -> Scratch {
        let base = std::env::temp_dir().join(format!("lpm-lab-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::SeqCst)));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let out = std::process::Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("python3 is needed for the stand-in lpmd");
        assert!(out.status.success(), "python3 failed: {}", String::from_utf8_lossy(&out.stderr));
        let python = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let script = base.join("lpmd-standin");
        std::fs::write(&script, format!("#!{python}\n{STANDIN}")).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch { base }
    }

    fn lab_dir(&self) -> PathBuf {
        self.base.join("lab")
    }

    fn opts(&self, hosts: usize, extra: &[&str]) -> LabOptions {
        let mut o = LabOptions::new(self.base.join("lpmd-standin"));
        o.hosts = hosts;
        o.lpmd_args = extra.iter().map(|s| s.to_string()).collect();
        o
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = Lab::down(&self.lab_dir()) {
            eprintln!("cleanup: {e}");
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

fn lab_netns(prefix: &str) -> Vec<String> {
    Netns::list().unwrap().into_iter().filter(|n| n.starts_with(&format!("{prefix}-"))).collect()
}

fn alive(pid: i32) -> bool {
    // A zombie (state Z) no longer runs.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !matches!(s[s.rfind(')').unwrap() + 2..].chars().next(), Some('Z') | Some('X')),
        Err(_) => false,
    }
}

/// Field `n` (1-based, as in proc(5)) of /proc/PID/stat.
fn stat_field(pid: i32, n: usize) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    s[s.rfind(')').unwrap() + 2..].split_whitespace().nth(n - 3).unwrap().to_string()
}

/// Runs `f` on a thread inside member `name`'s namespace.
fn in_member<T: Send>(lab: &Lab, name: &str, f: impl FnOnce() -> T + Send) -> T {
    let fd = lab.netns_of(name).unwrap().fd().unwrap();
    lpm_sys::net::in_netns(fd.as_fd(), f).unwrap()
}

/// Connects from member `from` to `to` and reads the greeting line.
fn greeting(lab: &Lab, from: &str, to: SocketAddrV4) -> std::io::Result<String> {
    in_member(lab, from, || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
}

/// Whether `ip` answers from member `from`: a refused TCP connection proves
/// that ARP resolved and the packet arrived as well as an accepted one.
fn answers(lab: &Lab, from: &str, ip: Ipv4Addr) -> Result<(), String> {
    in_member(lab, from, || match TcpStream::connect_timeout(&SocketAddr::V4(SocketAddrV4::new(ip, 9)), Duration::from_secs(3)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
        Err(e) => Err(format!("{ip} from {from}: {e}")),
    })
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<String>) {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        match f() {
            None => return,
            Some(s) => last = s,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}; last seen:\n{last}");
}

fn ip(ns: &str, args: &[&str]) -> String {
    net::ip(Some(ns), args).unwrap()
}

fn assert_gone(prefix: &str, pids: &[i32], dir: &Path) {
    assert_eq!(lab_netns(prefix), Vec::<String>::new(), "namespaces left");
    for &pid in pids {
        assert!(!alive(pid), "process {pid} left");
    }
    assert!(!dir.exists(), "{} left", dir.display());
}

#[test]
fn two_hosts_plumbing_exec_garp_and_down() {
    let s = Scratch::new();
    let dir = s.lab_dir();
    let t0 = Instant::now();
    let lab = Lab::up(&dir, &s.opts(2, &[])).unwrap();
    eprintln!("up in {:?}", t0.elapsed());
    let prefix = lab.prefix();
    assert!(lab.is_ready());
    assert_eq!(lab.id().len(), 6);
    let mut want: Vec<String> = ["client", "fabric", "h1", "h2"].iter().map(|m| format!("{prefix}-{m}")).collect();
    want.sort();
    assert_eq!(lab_netns(&prefix), want);

    // The key: 32 random bytes in hex, readable by root only.
    let key = std::fs::read_to_string(lab.key_path()).unwrap();
    assert_eq!(key.trim().len(), 64);
    assert!(key.trim().bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(std::fs::metadata(lab.key_path()).unwrap().mode() & 0o777, 0o600);

    // Each lpmd runs in its host's namespace, in a session of its own.
    let hosts = lab.hosts().to_vec();
    assert_eq!(hosts.len(), 2);
    for h in &hosts {
        let pid = h.pid.unwrap();
        assert!(alive(pid), "lpmd of {}", h.name);
        let ns = std::fs::metadata(lab.netns_of(&h.name).unwrap().path()).unwrap();
        let its = std::fs::metadata(format!("/proc/{pid}/ns/net")).unwrap();
        assert_eq!((ns.dev(), ns.ino()), (its.dev(), its.ino()), "lpmd of {} is in its namespace", h.name);
        assert_eq!(stat_field(pid, 6), pid.to_string(), "lpmd of {} leads its session", h.name);
        let log = std::fs::read_to_string(&h.log).unwrap();
        assert!(log.contains(&format!(" prefix {prefix} bridge lpmbr0 args ['--config', ")), "{log}");
        // The control socket answers.
        let mut c = UnixStream::connect(&h.control).unwrap();
        let mut line = String::new();
        c.read_to_string(&mut line).unwrap();
        assert_eq!(line, format!("{} {pid}\n", h.name));
    }
    assert_eq!(hosts[0].mgmt_addr, Ipv4Addr::new(10, 213, 0, 11));
    assert_eq!(hosts[1].listen, SocketAddrV4::new(Ipv4Addr::new(10, 213, 0, 12), 7411));
    assert_eq!(lab.client().addr, Ipv4Addr::new(10, 213, 1, 250));

    // Hosts reach each other over the management network.
    let g = greeting(&lab, "h1", hosts[1].listen).unwrap();
    assert_eq!(g, format!("h2 {}\n", hosts[1].pid.unwrap()));
    let g = greeting(&lab, "h2", hosts[0].listen).unwrap();
    assert_eq!(g, format!("h1 {}\n", hosts[0].pid.unwrap()));
    // The client is not on the management network.
    assert!(greeting(&lab, "client", hosts[0].listen).is_err());

    // load() reads back the same lab.
    let again = Lab::load(&dir).unwrap();
    assert_eq!(again.id(), lab.id());
    assert_eq!(again.hosts(), lab.hosts());
    assert_eq!(again.client(), lab.client());

    // exec runs in the member's namespace and passes the exit status on.
    let out = s.base.join("addr.txt");
    let st = lab.exec("h1", &["sh", "-c", &format!("ip -o addr > {}", out.display())]).unwrap();
    assert!(st.success());
    let addrs = std::fs::read_to_string(&out).unwrap();
    assert!(addrs.contains("mgmt0") && addrs.contains("10.213.0.11/24"), "{addrs}");
    assert!(!addrs.contains("10.213.0.12"), "{addrs}");
    assert_eq!(lab.exec("client", &["sh", "-c", "exit 7"]).unwrap().code(), Some(7));
    assert!(matches!(lab.exec("h3", &["true"]), Err(LabError::NoMember { .. })));
    assert!(matches!(lab.netns_of("nope"), Err(LabError::NoMember { .. })));

    // Partition addresses.
    let x = lab.allocate_ip("p1").unwrap();
    assert_eq!(x, Ipv4Addr::new(10, 213, 1, 10));
    assert_eq!(lab.free_ip().unwrap(), Ipv4Addr::new(10, 213, 1, 11));
    let y = lab.allocate_ip("p2").unwrap();
    assert_eq!(y, Ipv4Addr::new(10, 213, 1, 11));
    lab.release_ip(y).unwrap();
    assert_eq!(lab.addresses().unwrap().into_iter().collect::<Vec<_>>(), vec![(x, "p1".to_string())]);

    // A stand-in partition on h2's bridge: the client reaches it through
    // br-part, the uplink and lpmbr0.
    let h1 = lab.netns_of("h1").unwrap().name().to_string();
    let h2 = lab.netns_of("h2").unwrap().name().to_string();
    let fabric = lab.fabric().to_string();
    let client = lab.client().netns.clone();
    let p = format!("{prefix}-h2-p1");
    let _pguard = NetnsGuard(p.clone());
    Netns::create(&p).unwrap();
    // No IPv6 chatter: only the ARP under test may teach the bridges.
    let st = std::process::Command::new("ip")
        .args(["netns", "exec", &p, "sh", "-c"])
        .arg("echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6")
        .status()
        .unwrap();
    assert!(st.success());
    ip(&h2, &["link", "add", "v-p1", "type", "veth", "peer", "name", "eth0", "netns", &p]);
    ip(&h2, &["link", "set", "v-p1", "master", "lpmbr0", "up"]);
    let (m1, m2) = ("02:00:00:aa:00:01", "02:00:00:aa:00:02");
    ip(&p, &["link", "set", "eth0", "address", m1]);
    ip(&p, &["addr", "add", &format!("{x}/24"), "dev", "eth0"]);
    ip(&p, &["link", "set", "eth0", "up"]);
    answers(&lab, "client", x).unwrap();
    let neigh = ip(&client, &["neigh", "show", &x.to_string()]);
    assert!(neigh.contains(m1), "{neigh}");
    let links = ip(&fabric, &["-o", "link"]);
    assert!(links.contains("pt-h2@") && links.contains("master br-part"), "{links}");
    let fdb_port = |mac: &str| -> Option<String> {
        let out = std::process::Command::new("bridge").args(["-n", &fabric, "fdb", "show", "br", "br-part"]).output().unwrap();
        assert!(out.status.success(), "bridge fdb: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.starts_with(mac))
            .and_then(|l| l.split_whitespace().skip_while(|w| *w != "dev").nth(1).map(str::to_string))
    };
    assert_eq!(fdb_port(m1).as_deref(), Some("pt-h2"));

    // "Migrate" it to h1 with a new MAC, silently: nobody has learnt m2 yet,
    // and the client still holds m1.
    ip(&h2, &["link", "set", "v-p1", "netns", &h1]);
    ip(&h1, &["link", "set", "v-p1", "master", "lpmbr0", "up"]);
    ip(&p, &["link", "set", "eth0", "down"]);
    ip(&p, &["link", "set", "eth0", "address", m2]);
    ip(&p, &["link", "set", "eth0", "up"]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(fdb_port(m2), None, "m2 learnt before the announcement");
    assert!(ip(&client, &["neigh", "show", &x.to_string()]).contains(m1));

    net::gratuitous_arp(&p, "eth0", x).unwrap();
    wait_for("br-part to learn m2 on pt-h1", Duration::from_secs(3), || match fdb_port(m2) {
        Some(port) if port == "pt-h1" => None,
        other => Some(format!("{other:?}")),
    });
    wait_for("the client's neighbour entry to move to m2", Duration::from_secs(3), || {
        let n = ip(&client, &["neigh", "show", &x.to_string()]);
        if n.contains(m2) {
            None
        } else {
            Some(n)
        }
    });
    answers(&lab, "client", x).unwrap();
    let e = net::gratuitous_arp(&p, "nosuch0", x).unwrap_err();
    assert!(e.to_string().contains("nosuch0") && e.to_string().contains(&p), "{e}");

    // down removes everything, also the partition namespace lpmd "left".
    let pids: Vec<i32> = hosts.iter().map(|h| h.pid.unwrap()).collect();
    let t0 = Instant::now();
    Lab::down(&dir).unwrap();
    eprintln!("down in {:?}", t0.elapsed());
    assert_gone(&prefix, &pids, &dir);
    Lab::down(&dir).unwrap();
    assert!(matches!(Lab::load(&dir), Err(LabError::NotFound(_))));
}

struct NetnsGuard(String);
impl Drop for NetnsGuard {
    fn drop(&mut self) {
        let _ = Netns::delete(&self.0);
    }
}

/// The cgroup2 mount (pure v2: /sys/fs/cgroup; hybrid: /sys/fs/cgroup/unified).
fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find(|l| l.split(" - ").nth(1).is_some_and(|r| r.starts_with("cgroup2 ")))
        .map(|l| PathBuf::from(l.split_whitespace().nth(4).unwrap()))
        .expect("no cgroup2 mount: the kernel feature cgroup2 is needed")
}

#[test]
fn down_after_a_crash() {
    let s = Scratch::new();
    let dir = s.lab_dir();
    // lpmd of h2 ignores SIGTERM: down must escalate to SIGKILL.
    let lab = Lab::up(&dir, &s.opts(2, &["--ignore-term"])).unwrap();
    let prefix = lab.prefix();
    let hosts = lab.hosts().to_vec();
    let mut pids: Vec<i32> = hosts.iter().map(|h| h.pid.unwrap()).collect();

    // What an lpmd that crashed leaves behind: a partition namespace with a
    // process in it, in a frozen cgroup `lpm-ID/h1/web`.
    let p = format!("{prefix}-h1-web");
    let _pguard = NetnsGuard(p.clone());
    Netns::create(&p).unwrap();
    let mut sleeper = std::process::Command::new("ip").args(["netns", "exec", &p, "sleep", "1000"]).spawn().unwrap();
    let spid = sleeper.id() as i32;
    pids.push(spid);
    let cg_root = cgroup2_mount().join(&prefix);
    let cg = cg_root.join("h1").join("web");
    let _cguard = CgroupGuard(cg_root.clone());
    std::fs::create_dir_all(&cg).unwrap();
    std::fs::write(cg.join("cgroup.procs"), spid.to_string()).unwrap();
    std::fs::write(cg.join("cgroup.freeze"), "1").unwrap();
    wait_for("the cgroup to freeze", Duration::from_secs(3), || {
        let ev = std::fs::read_to_string(cg.join("cgroup.events")).unwrap();
        if ev.contains("frozen 1") {
            None
        } else {
            Some(ev)
        }
    });

    // The crash: h1's lpmd killed, pieces removed by hand.
    let h1pid = hosts[0].pid.unwrap();
    std::process::Command::new("kill").args(["-KILL", &h1pid.to_string()]).status().unwrap();
    ip(lab.fabric(), &["link", "del", "pt-h1"]);
    Netns::delete(&lab.client().netns).unwrap();
    std::fs::remove_file(lab.key_path()).unwrap();

    let t0 = Instant::now();
    Lab::down(&dir).unwrap();
    let took = t0.elapsed();
    eprintln!("down in {took:?}");
    assert!(took >= Duration::from_secs(4), "h2's lpmd ignores SIGTERM, so down waited for it: {took:?}");
    // The sleeper was our child: reap it, then check it died by SIGKILL.
    let st = sleeper.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(9));
    assert_gone(&prefix, &pids, &dir);
    assert!(!cg_root.exists(), "cgroup {} left", cg_root.display());
    Lab::down(&dir).unwrap();
}

struct CgroupGuard(PathBuf);
impl Drop for CgroupGuard {
    fn drop(&mut self) {
        for d in ["h1/web", "h1", ""] {
            let _ = std::fs::write(self.0.join(d).join("cgroup.freeze"), "0");
            let _ = std::fs::remove_dir(self.0.join(d));
        }
    }
}

#[test]
fn two_labs_at_once_do_not_collide() {
    let (s1, s2) = (Scratch::new(), Scratch::new());
    let (d1, d2) = (s1.lab_dir(), s2.lab_dir());
    let (o1, o2) = (s1.opts(1, &[]), s2.opts(1, &[]));
    let (l1, l2) = std::thread::scope(|sc| {
        let a = sc.spawn(|| Lab::up(&d1, &o1));
        let b = sc.spawn(|| Lab::up(&d2, &o2));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert_ne!(l1.id(), l2.id());
    // Same addresses, separate worlds.
    assert_eq!(l1.hosts()[0].listen, l2.hosts()[0].listen);
    for lab in [&l1, &l2] {
        let h = &lab.hosts()[0];
        assert_eq!(greeting(lab, "h1", h.listen).unwrap(), format!("h1 {}\n", h.pid.unwrap()));
        assert_eq!(lab_netns(&lab.prefix()).len(), 3);
    }
    let pid1 = l1.hosts()[0].pid.unwrap();
    Lab::down(&d1).unwrap();
    assert_gone(&l1.prefix(), &[pid1], &d1);
    // The other lab is untouched.
    let h = &l2.hosts()[0];
    assert!(alive(h.pid.unwrap()));
    assert_eq!(greeting(&l2, "h1", h.listen).unwrap(), format!("h1 {}\n", h.pid.unwrap()));
    let pid2 = h.pid.unwrap();
    Lab::down(&d2).unwrap();
    assert_gone(&l2.prefix(), &[pid2], &d2);
}

#[test]
fn lpmd_that_fails_to_start_leaves_nothing() {
    let s = Scratch::new();
    let dir = s.lab_dir();
    let note = s.base.join("prefix.txt");
    let e = Lab::up(&dir, &s.opts(2, &["--fail", "--note", note.to_str().unwrap()])).unwrap_err();
    match &e {
        LabError::LpmdExited { host, log_tail, .. } => {
            assert_eq!(host, "h1");
            assert!(log_tail.contains("standin refusing to start"), "{log_tail}");
        }
        other => panic!("want LpmdExited, got {other}"),
    }
    let prefix = std::fs::read_to_string(&note).unwrap().lines().next().unwrap().to_string();
    assert!(prefix.starts_with("lpm-"), "{prefix}");
    assert_gone(&prefix, &[], &dir);
}

#[test]
fn bad_input_is_refused_clearly() {
    let s = Scratch::new();
    let dir = s.lab_dir();
    let refused = |o: LabOptions, want: &str| {
        let e = Lab::up(&dir, &o).unwrap_err();
        assert!(matches!(e, LabError::BadOptions(_)), "{e}");
        assert!(e.to_string().contains(want), "{e} (want {want:?})");
        assert!(!dir.exists(), "a refused lab created {}", dir.display());
    };
    refused(s.opts(0, &[]), "hosts must be 1 to 8, not 0");
    refused(s.opts(9, &[]), "hosts must be 1 to 8, not 9");
    for (subnet, why) in [
        ("10.213.1.0", "expected an IPv4 network"),
        ("10.213.1.0/16", "only /24"),
        ("10.213.1.7/24", "host bits"),
        ("10.213.0.0/24", "management network"),
        ("10.213.300.0/24", "not an IPv4 address"),
    ] {
        let mut o = s.opts(2, &[]);
        o.subnet = subnet.to_string();
        refused(o, why);
    }
    refused(LabOptions::new(s.base.join("no-such-lpmd")), "no-such-lpmd");

    // A directory with other files is never taken (down would remove it).
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("precious"), "x").unwrap();
    assert!(matches!(Lab::up(&dir, &s.opts(1, &[])), Err(LabError::NotEmpty(_))));
    assert!(matches!(Lab::down(&dir), Err(LabError::NotEmpty(_))));
    assert!(dir.join("precious").exists());
    std::fs::remove_file(dir.join("precious")).unwrap();
    // An empty directory without a lab: down removes it; load finds nothing.
    assert!(matches!(Lab::load(&dir), Err(LabError::NotFound(_))));
    Lab::down(&dir).unwrap();
    assert!(!dir.exists());
    Lab::down(&dir).unwrap();

    // A second lab in the same directory is refused.
    let lab = Lab::up(&dir, &s.opts(1, &[])).unwrap();
    assert!(matches!(Lab::up(&dir, &s.opts(1, &[])), Err(LabError::Exists(_))));
    assert!(lab.host("h1").unwrap().pid.is_some_and(alive));
    // A custom subnet: the management network follows its first octets.
    drop(lab);
    Lab::down(&dir).unwrap();
    let mut o = s.opts(1, &[]);
    o.subnet = "172.31.5.0/24".into();
    let lab = Lab::up(&dir, &o).unwrap();
    assert_eq!(lab.hosts()[0].mgmt_addr, Ipv4Addr::new(172, 31, 0, 11));
    assert_eq!(lab.client().addr, Ipv4Addr::new(172, 31, 5, 250));
    assert_eq!(lab.free_ip().unwrap(), Ipv4Addr::new(172, 31, 5, 10));
    Lab::down(&dir).unwrap();
    let _ = std::io::stdout().flush();
}
