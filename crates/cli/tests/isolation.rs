//! A partition cannot reach its host's secrets (issue 12, item 5): from
//! inside, the cluster's key reads empty, no host's control socket or
//! state directory is there, a kernel module cannot be loaded, no device
//! but the usual character devices opens, and the
//! processes hold the default capability set in every set, the bounding
//! set too (no CAP_SYS_MODULE, no CAP_SYS_ADMIN to take a mask off), or
//! more with `--cap-add`. All of it still holds after the partition moved to
//! another host and back.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::lab::{Moved, TestLab};

/// Runs the probes each time `go-N` appears in its directory and writes
/// what it found to `result-N`. Arguments: the directory, the key file,
/// the control sockets and the state directories (comma-separated), 1 to
/// try to unmount the key's mask (a partition with CAP_SYS_ADMIN would
/// succeed).
const PROBE: &str = r#"
import ctypes, errno, os, socket, sys, time
out, key, socks, dirs = sys.argv[1], sys.argv[2], sys.argv[3].split(','), sys.argv[4].split(',')
try_umount = sys.argv[5] == '1'
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def err(e):
    return errno.errorcode.get(e, str(e))
def probe():
    r = []
    try:
        r.append('key ' + ('empty' if not open(key, 'rb').read() else 'READ'))
    except OSError as e:
        r.append('key ' + err(e.errno))
    for s in socks:
        c = socket.socket(socket.AF_UNIX)
        try:
            c.connect(s)
            r.append('socket CONNECTED')
        except OSError as e:
            r.append('socket ' + err(e.errno))
        c.close()
    for d in dirs:
        try:
            r.append('dir %d entries' % len(os.listdir(d)))
        except OSError as e:
            r.append('dir ' + err(e.errno))
    ctypes.set_errno(0)
    ret = libc.syscall(175, ctypes.c_void_p(None), ctypes.c_ulong(0), ctypes.c_char_p(b''))
    r.append('init_module %d %s' % (ret, err(ctypes.get_errno())))
    ctypes.set_errno(0)
    ret = libc.syscall(313, ctypes.c_int(-1), ctypes.c_char_p(b''), ctypes.c_int(0))
    r.append('finit_module %d %s' % (ret, err(ctypes.get_errno())))
    for dev in ('/dev/null', '/dev/urandom', '/dev/ptmx', '/dev/kmsg', '/dev/tty0', '/dev/loop0'):
        try:
            os.close(os.open(dev, os.O_RDWR if dev == '/dev/ptmx' else os.O_RDONLY))
            r.append(dev + ' opens')
        except OSError as e:
            r.append(dev + ' ' + err(e.errno))
    if try_umount:
        ctypes.set_errno(0)
        ret = libc.umount2(key.encode(), 2)
        r.append('umount key %d %s' % (ret, err(ctypes.get_errno())))
    status = open('/proc/self/status').read().splitlines()
    for k in ('CapEff', 'CapBnd', 'CapInh'):
        r.append(k + ' ' + [l.split()[1] for l in status if l.startswith(k + ':')][0])
    return '\n'.join(r) + '\n'
n = 0
print('probe ready', flush=True)
while True:
    if os.path.exists(os.path.join(out, 'go-%d' % n)):
        tmp = os.path.join(out, 'tmp')
        with open(tmp, 'w') as f:
            f.write(probe())
        os.rename(tmp, os.path.join(out, 'result-%d' % n))
        n += 1
    time.sleep(0.02)
"#;

/// Asks the probe of `out` for its round `n` and returns what it found.
fn probe(out: &Path, n: usize) -> String {
    std::fs::write(out.join(format!("go-{n}")), "").unwrap();
    let result = out.join(format!("result-{n}"));
    let t = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(&result) {
            return s;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no {} after 60 s", result.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the probe must find with capability set `caps` (hex as /proc
/// shows it).
fn expected(hosts: usize, caps: u64, admin: bool) -> String {
    let mut e = vec!["key empty".to_string()];
    e.extend((0..hosts).map(|_| "socket ENOENT".to_string()));
    e.extend((0..hosts).map(|_| "dir 0 entries".to_string()));
    // A kernel built without modules (this machine's) refuses everybody.
    let module = if Path::new("/proc/modules").exists() { "EPERM" } else { "ENOSYS" };
    e.push(format!("init_module -1 {module}"));
    e.push(format!("finit_module -1 {module}"));
    // The usual character devices only (those the host has).
    for (dev, usual) in [
        ("/dev/null", true),
        ("/dev/urandom", true),
        ("/dev/ptmx", true),
        ("/dev/kmsg", false),
        ("/dev/tty0", false),
        ("/dev/loop0", false),
    ] {
        e.push(match (Path::new(dev).exists(), usual) {
            (false, _) => format!("{dev} ENOENT"),
            (true, true) => format!("{dev} opens"),
            (true, false) => format!("{dev} EPERM"),
        });
    }
    // Without CAP_SYS_ADMIN no mask comes off.
    if !admin {
        e.push("umount key -1 EPERM".into());
    }
    e.push(format!("CapEff {caps:016x}"));
    e.push(format!("CapBnd {caps:016x}"));
    e.push(format!("CapInh {:016x}", 0));
    e.join("\n") + "\n"
}

#[test]
fn partition_cannot_reach_host_secrets_before_and_after_moves() {
    let lab = TestLab::up("iso", 2);
    let hosts: Vec<serde_json::Value> = lab.lab_json()["hosts"].as_array().unwrap().clone();
    let socks: Vec<String> = hosts.iter().map(|h| h["control"].as_str().unwrap().to_string()).collect();
    let dirs: Vec<String> = hosts.iter().map(|h| h["dir"].as_str().unwrap().to_string()).collect();
    let key = lab.dir.join("key").to_string_lossy().into_owned();
    // The host sees them all.
    assert!(!std::fs::read_to_string(&key).unwrap().is_empty());
    assert!(socks.iter().all(|s| Path::new(s).exists()));

    let default = lpm_host::isolation::Isolation::default().caps().unwrap();
    let net_admin = 1u64 << lpm_host::isolation::cap_number("NET_ADMIN").unwrap();
    // With every capability lpmd holds, the masks and the device filter
    // still stand (a mount could take a mask off: not tried).
    let all = permitted_caps() & ((1 << lpm_host::isolation::CAP_NAMES.len()) - 1);
    let cases: [(&str, &[&str], u64); 3] =
        [("plain", &[], default), ("netadmin", &["--cap-add", "CAP_NET_ADMIN"], default | net_admin), ("all", &["--cap-add", "ALL"], all)];
    let mut outs = Vec::new();
    for (name, extra, caps) in cases {
        let out = lab.vol.join(name);
        std::fs::create_dir_all(&out).unwrap();
        let umount = if name == "all" { "0" } else { "1" };
        let argv: Vec<String> = ["python3", "-c", PROBE, &out.to_string_lossy(), &key, &socks.join(","), &dirs.join(","), umount]
            .iter()
            .map(|s| s.to_string())
            .collect();
        lab.create_with(name, "h1", Some("256M"), extra, &argv).unwrap();
        lab.wait_log(name, "probe ready", Duration::from_secs(60));
        assert_eq!(probe(&out, 0), expected(hosts.len(), caps, name == "all"), "partition {name} on h1");
        outs.push((name, out, caps));
    }

    // The masks and the capabilities go with the partition, and come back.
    for (round, to) in [(1, "h2"), (2, "h1")] {
        for (name, out, caps) in &outs {
            match lab.migrate(name, to) {
                Moved::Completed(_) => {}
                Moved::Failed(why) => panic!("migrate {name} to {to}: {why}"),
            }
            assert_eq!(probe(out, round), expected(hosts.len(), *caps, *name == "all"), "partition {name} after its move to {to}");
        }
    }
}

/// This process's permitted capabilities (lpmd's, which the lab starts
/// as root like this test).
fn permitted_caps() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let v = status.lines().find_map(|l| l.strip_prefix("CapPrm:")).unwrap();
    u64::from_str_radix(v.trim(), 16).unwrap()
}

#[test]
fn an_unknown_capability_is_refused_by_name() {
    let lab = TestLab::up("isocap", 1);
    let e = lab.create_with("bad", "h1", None, &["--cap-add", "CAP_NOPE"], &["true".to_string()]).unwrap_err();
    assert!(e.contains("CAP_NOPE"), "{e}");
}

/// Reports, each time `go-N` appears in its directory (its volume), its
/// ids and maps, whether it reads a host file only root may read,
/// whether it loads a module, binds a low port and writes its volume.
const USERNS_PROBE: &str = r#"
import ctypes, errno, os, socket, sys, time
out, secret = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def err(e):
    return errno.errorcode.get(e, str(e))
def probe(n):
    r = ['ids %d %d %d %d' % (os.getuid(), os.geteuid(), os.getgid(), os.getegid())]
    r.append('uid_map ' + ' '.join(open('/proc/self/uid_map').read().split()))
    r.append('gid_map ' + ' '.join(open('/proc/self/gid_map').read().split()))
    try:
        open(secret, 'rb').read()
        r.append('secret READ')
    except OSError as e:
        r.append('secret ' + err(e.errno))
    ctypes.set_errno(0)
    ret = libc.syscall(313, ctypes.c_int(-1), ctypes.c_char_p(b''), ctypes.c_int(0))
    r.append('finit_module %d %s' % (ret, err(ctypes.get_errno())))
    s = socket.socket()
    try:
        s.bind(('0.0.0.0', 80))
        r.append('bind 80 ok')
    except OSError as e:
        r.append('bind 80 ' + err(e.errno))
    s.close()
    with open(os.path.join(out, 'mine-%d' % n), 'w') as f:
        f.write('x')
    st = os.stat(os.path.join(out, 'mine-%d' % n))
    r.append('volume file %d %d' % (st.st_uid, st.st_gid))
    status = open('/proc/self/status').read().splitlines()
    r.append('CapEff ' + [l.split()[1] for l in status if l.startswith('CapEff:')][0])
    return '\n'.join(r) + '\n'
n = 0
print('probe ready', flush=True)
while True:
    if os.path.exists(os.path.join(out, 'go-%d' % n)):
        tmp = os.path.join(out, 'tmp')
        with open(tmp, 'w') as f:
            f.write(probe(n))
        os.rename(tmp, os.path.join(out, 'result-%d' % n))
        n += 1
    time.sleep(0.02)
"#;

/// A `--userns` partition's root is root in a user namespace of its own
/// only: its ids 0 are an unprivileged host range (one per partition,
/// none shared), it cannot read a host file only root may read nor load
/// a module, it owns its volume's files (given to the range at create)
/// and binds low ports. Its migration is refused by name before any
/// harm, and it runs on.
#[test]
fn a_userns_partition_is_root_only_inside() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let lab = TestLab::up("userns", 2);
    let secret = lab.root.join("root-only");
    std::fs::write(&secret, "secret").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secret = secret.to_string_lossy().into_owned();
    let mut firsts = Vec::new();
    for name in ["ua", "ub"] {
        let out = lab.vol.join(name);
        std::fs::create_dir_all(&out).unwrap();
        // Root's file before the create: the partition's root's after it.
        std::fs::write(out.join("before"), "x").unwrap();
        let o = out.to_string_lossy().into_owned();
        let args = ["partition", "create", name, "--host", "h1", "--volume", &o, "--memory", "256M", "--userns", "--"];
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["python3", "-c", USERNS_PROBE, &o, &secret]);
        lab.ok(&args);
        lab.wait_log(name, "probe ready", Duration::from_secs(60));
        let first = std::fs::metadata(&out).unwrap().uid();
        assert!(first >= lpm_host::isolation::DEFAULT_USERNS_BASE, "{name}'s volume is owned by {first}");
        assert_eq!(std::fs::metadata(out.join("before")).unwrap().gid(), first, "{name}'s volume file");
        let pid = lab.partitions_on("h1").into_iter().find(|p| p.spec.name == name).and_then(|p| p.pid).expect("running");
        let map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
        assert_eq!(map.split_whitespace().collect::<Vec<_>>(), ["0", &first.to_string(), "65536"], "{name}'s uid map seen from the host");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap().split_whitespace().skip(1).collect::<Vec<_>>();
        assert_eq!(uids, vec![first.to_string().as_str(); 4], "{name}'s host uids");
        firsts.push((name, out, first));
    }
    assert_ne!(firsts[0].2, firsts[1].2, "two partitions share an id range");
    let module = if Path::new("/proc/modules").exists() { "EPERM" } else { "ENOSYS" };
    let default = lpm_host::isolation::Isolation::default().caps().unwrap();
    let expected = |first: u32| {
        format!(
            "ids 0 0 0 0\nuid_map 0 {first} 65536\ngid_map 0 {first} 65536\nsecret EACCES\nfinit_module -1 {module}\nbind 80 ok\nvolume file 0 0\nCapEff {default:016x}\n"
        )
    };
    for (name, out, first) in &firsts {
        assert_eq!(probe(out, 0), expected(*first), "partition {name}");
        assert_eq!(std::fs::metadata(out.join("mine-0")).unwrap().uid(), *first, "{name}'s new file seen from the host");
    }
    // Refused by name, before anything is stopped or sent; it runs on.
    let (name, out, first) = &firsts[0];
    match lab.migrate(name, "h2") {
        Moved::Completed(_) => panic!("a --userns partition migrated"),
        Moved::Failed(why) => {
            assert!(why.contains("user namespace") && why.contains(&format!("host ids {first} to")), "{why}");
        }
    }
    assert_eq!(probe(out, 1), expected(*first), "partition {name} after the refusal");
    assert!(lab.partitions_on("h2").is_empty());
}
