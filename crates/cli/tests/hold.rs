//! Nothing sent to a partition during a migration's stop is dropped
//! (crates/host/src/hold.rs): a client in the client namespace keeps a
//! numbered UDP datagram stream, a TCP request stream on one connection
//! and a stream of new TCP connections going across migrations whose stop
//! is stretched by 500 ms (`LPM_FAULT` sleep at `source.frozen`), so
//! that all three meet the stop. Every datagram is answered exactly once,
//! every request and every new connection is answered, once the migration
//! completes and once it rolls back (the held frames then reach the copy
//! on the source). How long the client waited is printed, not asserted.

use std::time::{Duration, Instant};

mod common;
use common::lab::TestLab;

/// The partition's service: a UDP echo on 7001, and on 7002 a TCP
/// service answering each line `L` with `ok L`, any number of
/// connections, one thread (selectors).
const SERVER: &str = r#"
import selectors, socket
sel = selectors.DefaultSelector()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
u.bind(('0.0.0.0', 7001))
u.setblocking(False)
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(('0.0.0.0', 7002))
l.listen(64)
l.setblocking(False)
sel.register(u, selectors.EVENT_READ, 'u')
sel.register(l, selectors.EVENT_READ, 'l')
bufs = {}
print('listening', flush=True)
while True:
    for key, _ in sel.select():
        if key.data == 'u':
            while True:
                try:
                    d, a = u.recvfrom(2048)
                except BlockingIOError:
                    break
                u.sendto(d, a)
        elif key.data == 'l':
            while True:
                try:
                    c, _ = l.accept()
                except BlockingIOError:
                    break
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ, 'c')
                bufs[c] = b''
        else:
            c = key.fileobj
            try:
                d = c.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                d = b''
            if not d:
                sel.unregister(c)
                c.close()
                del bufs[c]
                continue
            b = bufs[c] + d
            while b'\n' in b:
                line, b = b.split(b'\n', 1)
                c.setblocking(True)
                c.sendall(b'ok ' + line + b'\n')
                c.setblocking(False)
            bufs[c] = b
"#;

/// The client: until SIGINT, a numbered datagram every 5 ms, a request
/// on one connection after each answer, and a new connection (connect,
/// one request, close) every 20 ms; then it waits for the datagrams'
/// answers still due (at most 20 s) and prints one line per stream.
const CLIENT: &str = r#"
import os, signal, socket, sys, threading, time
ip, progress = sys.argv[1], sys.argv[2]
stop = threading.Event()
signal.signal(signal.SIGINT, lambda *a: stop.set())
lock = threading.Lock()
sent, answers = {}, {}
errors = []
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
u.connect((ip, 7001))
def udp_send():
    n = 0
    while not stop.is_set():
        n += 1
        with lock:
            sent[n] = time.monotonic()
        u.send(b'%d' % n)
        time.sleep(0.005)
def udp_recv():
    u.settimeout(0.2)
    while True:
        try:
            d = u.recv(2048)
        except socket.timeout:
            if done.is_set():
                return
            continue
        n = int(d)
        with lock:
            answers.setdefault(n, []).append(time.monotonic())
done = threading.Event()
tcp = {'n': 0, 'longest': 0.0}
def tcp_loop():
    s = socket.create_connection((ip, 7002), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile('rb')
    while not stop.is_set():
        tcp['n'] += 1
        t = time.monotonic()
        s.sendall(b'r%d\n' % tcp['n'])
        a = f.readline()
        tcp['longest'] = max(tcp['longest'], time.monotonic() - t)
        if a != b'ok r%d\n' % tcp['n']:
            errors.append('request %d: %r' % (tcp['n'], a))
            return
        time.sleep(0.002)
conn = {'n': 0, 'longest': 0.0}
def conn_loop():
    while not stop.is_set():
        conn['n'] += 1
        t = time.monotonic()
        try:
            s = socket.create_connection((ip, 7002), timeout=30)
            s.sendall(b'c%d\n' % conn['n'])
            a = s.makefile('rb').readline()
            s.close()
        except OSError as e:
            errors.append('connection %d: %s' % (conn['n'], e))
            return
        conn['longest'] = max(conn['longest'], time.monotonic() - t)
        if a != b'ok c%d\n' % conn['n']:
            errors.append('connection %d: %r' % (conn['n'], a))
            return
        time.sleep(0.02)
ts = [threading.Thread(target=f) for f in (udp_send, tcp_loop, conn_loop)]
r = threading.Thread(target=udp_recv)
r.start()
def report():
    while not stop.is_set():
        with lock:
            got = len(answers)
        with open(progress + '.tmp', 'w') as f:
            f.write('%d %d %d\n' % (got, tcp['n'], conn['n']))
        os.replace(progress + '.tmp', progress)
        time.sleep(0.05)
ts.append(threading.Thread(target=report))
for t in ts:
    t.start()
for t in ts:
    t.join()
end = time.monotonic() + 20
while time.monotonic() < end:
    with lock:
        if all(n in answers for n in sent):
            break
    time.sleep(0.05)
done.set()
r.join()
missing = [n for n in sent if n not in answers]
twice = [n for n, a in answers.items() if len(a) > 1]
longest = max((answers[n][0] - sent[n] for n in sent if n in answers), default=0)
print('udp sent %d missing %d duplicated %d longest_wait_ms %.1f' % (len(sent), len(missing), len(twice), longest * 1000))
print('tcp requests %d longest_wait_ms %.1f' % (tcp['n'], tcp['longest'] * 1000))
print('connections %d longest_wait_ms %.1f' % (conn['n'], conn['longest'] * 1000))
print('errors %d' % len(errors))
def ranges(ns):
    out = []
    for n in sorted(ns):
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ' '.join('%d-%d' % (a, b) if a != b else '%d' % a for a, b in out[:20])
for e in errors[:5] + ['missing %s' % ranges(missing)] * bool(missing) + ['duplicated %s' % ranges(twice)] * bool(twice):
    print(e)
sys.exit(1 if errors or missing or twice else 0)
"#;

/// The stop lasts 500 ms longer on every source, so that each stream
/// meets it whatever the machine's load. Not much longer: what was held
/// arrives at once, and a burst larger than the receiver's socket
/// buffer (here 1 MiB, a datagram per 5 ms) would be dropped there.
const STRETCH: &str = "source.frozen=sleep=500";

/// The frames `host`'s lpmd let go of, per release: (toward, frames).
fn releases(lab: &TestLab, host: &str) -> Vec<(String, u64)> {
    let log = lab.lpmd_log_tail(host, 100_000);
    log.lines()
        .filter(|l| l.contains("held frames released"))
        .map(|l| {
            let field = |k: &str| l.split_whitespace().find_map(|w| w.strip_prefix(k)).unwrap_or_default().to_string();
            (field("toward="), field("frames=").parse().unwrap_or(0))
        })
        .collect()
}

/// Waits until the client has had `n` more answers on each of its
/// streams than when `since` was taken (its progress file), so that all
/// three run when the migration starts.
fn streams_run(lab: &TestLab, since: [u64; 3], n: u64) -> [u64; 3] {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(lab.root.join("progress")).unwrap_or_default();
        let v: Vec<u64> = text.split_whitespace().filter_map(|w| w.parse().ok()).collect();
        if v.len() == 3 && (0..3).all(|i| v[i] >= since[i] + n) {
            return [v[0], v[1], v[2]];
        }
        assert!(t.elapsed() < Duration::from_secs(120), "the client's streams do not run: {text:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start(lab: &mut TestLab) -> (usize, String) {
    std::fs::write(lab.vol.join("hold_server.py"), SERVER).unwrap();
    let argv = vec!["python3".to_string(), lab.vol.join("hold_server.py").to_string_lossy().into_owned()];
    lab.create("echo", "h1", Some("256M"), &argv).unwrap();
    lab.wait_log("echo", "listening", Duration::from_secs(30));
    let ip = lab.ip_of("echo");
    let progress = lab.root.join("progress").to_string_lossy().into_owned();
    let c = lab.start_client(lab.client_cmd(&["python3", "-c", CLIENT, &ip, &progress]));
    (c, ip)
}

/// The hold ports and their nftables tables left in `host`'s namespace.
fn hold_ports(lab: &TestLab, host: &str) -> Vec<String> {
    let ns = lab.lab().host(host).unwrap().netns.clone();
    let out = std::process::Command::new("ip").args(["-n", &ns, "-o", "link", "show"]).output().unwrap();
    let mut left: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.len() == 10 && (n.starts_with("lh") || n.starts_with("lg")))
        .collect();
    let tables = std::process::Command::new("ip").args(["netns", "exec", &ns, "nft", "list", "tables"]).output().unwrap();
    left.extend(String::from_utf8_lossy(&tables.stdout).lines().filter(|l| l.contains("lpm_hold_")).map(str::to_string));
    left
}

#[test]
fn datagrams_requests_and_connections_sent_during_the_stop_are_answered() {
    let mut lab = TestLab::up_with("hold", 2, &[("LPM_FAULT", STRETCH)]);
    let (c, _) = start(&mut lab);
    let mut seen = [0; 3];
    for to in ["h2", "h1"] {
        streams_run(&lab, seen, 3);
        let t = Instant::now();
        let r = lab.ok(&["migrate", "echo", "--to", to, "--json"]);
        let r: serde_json::Value = serde_json::from_str(&r).unwrap();
        assert_eq!(r["outcome"]["result"], "completed", "report: {r}");
        println!("to {to}: downtime_ms {} (migration {:.0} ms)", r["downtime_ms"], t.elapsed().as_secs_f64() * 1e3);
        seen = streams_run(&lab, [0; 3], 0);
    }
    streams_run(&lab, seen, 3);
    let (ok, summary) = lab.finish_client(c);
    println!("{summary}");
    assert!(ok && summary.contains("missing 0 duplicated 0") && summary.contains("errors 0"), "client: {summary}");
    for (host, other) in [("h1", "h2"), ("h2", "h1")] {
        let rel = releases(&lab, host);
        println!("{host} released {rel:?}");
        assert!(
            rel.len() == 1 && rel[0].0 == "Network" && rel[0].1 > 0,
            "{host}, the source toward {other}, let go of what it held once, toward the network: {rel:?}"
        );
        // As soon as the target said its copy runs: not after the source
        // recorded the outcome (the held requests waited for that too).
        let log = lab.lpmd_log_tail(host, 100_000);
        let at = |what: &str| log.lines().position(|l| l.contains(what));
        // (The release runs on a thread of its own, which may log its
        // end after the record: it is its start that must come first.)
        let (releasing, completed) =
            (at("the held frames go to it"), log.lines().position(|l| l.contains("migration state") && l.contains("Completed")));
        assert!(
            releasing.is_some() && completed.is_some() && releasing < completed,
            "{host} let the held frames go (line {releasing:?}) only after it recorded the migration completed (line {completed:?})"
        );
    }
    assert_eq!(hold_ports(&lab, "h2"), Vec::<String>::new(), "hold ports left on h2");
    assert_eq!(hold_ports(&lab, "h1"), Vec::<String>::new(), "hold ports left on h1");
}

#[test]
fn a_rolled_back_stop_gives_what_it_held_to_the_source_copy() {
    let fault = format!("{STRETCH},h2:target.restored=fail");
    let mut lab = TestLab::up_with("holdback", 2, &[("LPM_FAULT", &fault)]);
    let (c, _) = start(&mut lab);
    streams_run(&lab, [0; 3], 3);
    let out = lab.lpm(&["migrate", "echo", "--to", "h2", "--json"]);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("\"completed\""), "the migration was to fail at the target's restore: {text}");
    assert_eq!(lab.host_of("echo"), "h1");
    lab.wait_clean("h2", Duration::from_secs(30));
    let seen = streams_run(&lab, [0; 3], 0);
    streams_run(&lab, seen, 3);
    let (ok, summary) = lab.finish_client(c);
    println!("{summary}");
    assert!(ok && summary.contains("missing 0 duplicated 0") && summary.contains("errors 0"), "client: {summary}");
    let rel = releases(&lab, "h1");
    println!("h1 released {rel:?}");
    assert!(rel.len() == 1 && rel[0].0 == "Partition" && rel[0].1 > 0, "h1 gave what it held to its own copy, once: {rel:?}");
    assert_eq!(hold_ports(&lab, "h1"), Vec::<String>::new(), "hold ports left on h1");
}
