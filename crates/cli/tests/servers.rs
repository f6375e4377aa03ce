//! Real servers from Debian's packages (redis-server, nginx) and a Python
//! asyncio server, checkpointed and restored through the `lpm` binary, their
//! state checked from outside over loopback.
//!
//! Clients of the test live outside the checkpointed tree, so every one
//! hangs up, and the test waits until the server has closed its end, before
//! a checkpoint: an established connection to a peer outside the tree is
//! refused by design. Connections inside the tree (the asyncio server's own
//! client) are carried over.
//!
//! The servers come from scripts/setup.sh.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Polls `f` until it returns Some, failing the test after `secs`.
fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let t = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A loopback port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

/// The program `name`, which scripts/setup.sh installs.
fn program(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run scripts/setup.sh");
}

fn connect(port: u16) -> TcpStream {
    let s = wait_for(&format!("a connection to port {port}"), 10, || TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok());
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Closes a client connection and waits until the server has closed its
/// end too: no descriptor holds that socket any more (inode 0 or gone in
/// /proc/net/tcp), so the server's tree has no connection leaving it.
fn hang_up(s: TcpStream) {
    let (local, peer) = (s.local_addr().unwrap().port(), s.peer_addr().unwrap().port());
    drop(s);
    wait_for(&format!("the server to close its end of the connection from port {local}"), 10, || {
        let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let held = tcp.lines().skip(1).any(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap_or(""), 16).ok();
            w.len() > 9 && port(w[1]) == Some(peer) && port(w[2]) == Some(local) && w[9] != "0"
        });
        (!held).then_some(())
    });
}

/// Counts the threads of each process of the tree, in pid order.
fn threads_of(pid: i32) -> Vec<(i32, usize)> {
    let mut t: Vec<(i32, usize)> =
        tree_of(pid).into_iter().map(|p| (p, std::fs::read_dir(format!("/proc/{p}/task")).unwrap().count())).collect();
    t.sort_unstable();
    t
}

// ---------------------------------------------------------------- redis

/// A reply of the redis protocol (RESP2).
#[derive(Debug, Clone, PartialEq)]
enum Reply {
    Status(String),
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    fn text(&self) -> String {
        match self {
            Reply::Status(s) => s.clone(),
            Reply::Bulk(Some(b)) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("redis replied {other:?} where text was expected"),
        }
    }

    fn strings(&self) -> Vec<String> {
        match self {
            Reply::Array(v) => v.iter().map(Reply::text).collect(),
            other => panic!("redis replied {other:?} where an array was expected"),
        }
    }
}

/// A redis client speaking RESP2 over loopback, pipelining its commands.
struct Redis {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Redis {
    fn connect(port: u16) -> Redis {
        let s = connect(port);
        Redis { r: BufReader::new(s.try_clone().unwrap()), w: s }
    }

    /// Sends every command, then reads every reply, in batches (so neither
    /// side's buffers fill up).
    fn pipeline(&mut self, cmds: &[Vec<String>]) -> Vec<Reply> {
        let mut out = Vec::with_capacity(cmds.len());
        for batch in cmds.chunks(500) {
            let mut buf = Vec::new();
            for c in batch {
                buf.extend_from_slice(format!("*{}\r\n", c.len()).as_bytes());
                for a in c {
                    buf.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
                }
            }
            self.w.write_all(&buf).unwrap();
            for _ in batch {
                out.push(self.reply());
            }
        }
        out
    }

    fn cmd(&mut self, args: &[&str]) -> Reply {
        self.pipeline(&[args.iter().map(|s| s.to_string()).collect()]).pop().unwrap()
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        assert!(l.ends_with("\r\n"), "redis reply cut short: {l:?}");
        l.truncate(l.len() - 2);
        l
    }

    fn reply(&mut self) -> Reply {
        let l = self.line();
        let (kind, rest) = l.split_at(1);
        match kind {
            "+" => Reply::Status(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(rest.parse().unwrap()),
            "$" => {
                let n: i64 = rest.parse().unwrap();
                if n < 0 {
                    return Reply::Bulk(None);
                }
                let mut b = vec![0; n as usize + 2];
                self.r.read_exact(&mut b).unwrap();
                b.truncate(n as usize);
                Reply::Bulk(Some(b))
            }
            "*" => {
                let n: i64 = rest.parse().unwrap();
                Reply::Array((0..n.max(0)).map(|_| self.reply()).collect())
            }
            _ => panic!("bad redis reply line {l:?}"),
        }
    }

    fn hang_up(self) {
        drop(self.r);
        hang_up(self.w);
    }
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// The dataset: 20000 keys, 4000 of each of five types.
const PER_TYPE: usize = 4000;

fn dataset_commands() -> Vec<Vec<String>> {
    let mut cmds = Vec::new();
    for i in 0..PER_TYPE {
        let v = format!("value-{i}-{}", i * 7919 % 10007);
        cmds.push(args(&["SET", &format!("str:{i}"), &v]));
        cmds.push(args(&["HSET", &format!("hash:{i}"), "id", &i.to_string(), "name", &format!("n{i}"), "sq", &(i * i).to_string()]));
        cmds.push(args(&["RPUSH", &format!("list:{i}"), "a", &i.to_string(), "c", &format!("x{}", i % 13)]));
        cmds.push(args(&["SADD", &format!("set:{i}"), &format!("m{}", i % 7), &format!("m{}", i % 11), "common"]));
        cmds.push(args(&["ZADD", &format!("zset:{i}"), "1", "one", &(i % 100).to_string(), "var", "1000", "top"]));
    }
    cmds
}

/// Reads every key of the dataset back and compares it with what was
/// written.
fn check_dataset(port: u16) {
    let mut r = Redis::connect(port);
    let mut cmds = Vec::new();
    for i in 0..PER_TYPE {
        cmds.push(args(&["GET", &format!("str:{i}")]));
        cmds.push(args(&["HGETALL", &format!("hash:{i}")]));
        cmds.push(args(&["LRANGE", &format!("list:{i}"), "0", "-1"]));
        cmds.push(args(&["SMEMBERS", &format!("set:{i}")]));
        cmds.push(args(&["ZRANGE", &format!("zset:{i}"), "0", "-1", "WITHSCORES"]));
    }
    let replies = r.pipeline(&cmds);
    for (i, rep) in replies.chunks(5).enumerate() {
        assert_eq!(rep[0].text(), format!("value-{i}-{}", i * 7919 % 10007), "str:{i}");
        let mut h = rep[1].strings();
        let mut want = args(&["id", &i.to_string(), "name", &format!("n{i}"), "sq", &(i * i).to_string()]);
        h.sort();
        want.sort();
        assert_eq!(h, want, "hash:{i}");
        assert_eq!(rep[2].strings(), args(&["a", &i.to_string(), "c", &format!("x{}", i % 13)]), "list:{i}");
        let mut s = rep[3].strings();
        let mut want: Vec<String> = vec![format!("m{}", i % 7), format!("m{}", i % 11), "common".into()];
        s.sort();
        want.sort();
        want.dedup();
        assert_eq!(s, want, "set:{i}");
        let mut z = vec![("one".to_string(), 1), ("var".to_string(), i % 100), ("top".to_string(), 1000)];
        z.sort_by_key(|&(ref m, s)| (s, m.clone()));
        let want: Vec<String> = z.into_iter().flat_map(|(m, s)| [m, s.to_string()]).collect();
        assert_eq!(rep[4].strings(), want, "zset:{i}");
    }
    r.hang_up();
}

fn digest(port: u16) -> String {
    let mut r = Redis::connect(port);
    let d = r.cmd(&["DEBUG", "DIGEST"]).text();
    r.hang_up();
    d
}

/// Writes go through and are read back.
fn check_writes(port: u16, tag: &str) {
    let mut r = Redis::connect(port);
    assert_eq!(r.cmd(&["SET", &format!("written:{tag}"), tag]), Reply::Status("OK".into()));
    let n = match r.cmd(&["GET", "writes"]) {
        Reply::Bulk(None) => 0,
        v => v.text().parse::<i64>().unwrap(),
    };
    assert_eq!(r.cmd(&["INCR", "writes"]), Reply::Int(n + 1));
    assert_eq!(r.cmd(&["GET", &format!("written:{tag}")]).text(), tag);
    r.hang_up();
}

/// redis-server loaded with 20000 keys of five types: checkpointed with
/// --leave-running (the original serves on; the images hold the state of
/// that moment), then checkpointed (kill) and restored three times in a
/// row, the restored server checkpointed again each time. After each
/// restore DEBUG DIGEST is unchanged, a new client reads every key, and
/// writes go through.
#[test]
fn redis_keeps_its_dataset_across_checkpoint_restore() {
    let mut s = Scene::new("redis");
    let port = free_port();
    let conf = s.path("redis.conf");
    std::fs::write(
        &conf,
        format!(
            "bind 127.0.0.1\nport {port}\ndaemonize no\nsave \"\"\nappendonly no\ndir {dir}\nlogfile {dir}/redis.log\n\
             enable-debug-command local\n",
            dir = s.dir.display()
        ),
    )
    .unwrap();
    let pid = s.spawn(Command::new(program("redis-server")).arg(&conf));
    wait_for("redis to answer PING", 10, || {
        let st = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
        st.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = Redis { r: BufReader::new(st.try_clone().unwrap()), w: st };
        let pong = r.cmd(&["PING"]) == Reply::Status("PONG".into());
        r.hang_up();
        pong.then_some(())
    });
    let mut r = Redis::connect(port);
    assert!(r.pipeline(&dataset_commands()).iter().all(|x| !matches!(x, Reply::Error(_))), "loading the dataset failed");
    assert_eq!(r.cmd(&["DBSIZE"]), Reply::Int(5 * PER_TYPE as i64));
    r.hang_up();
    let mut want = digest(port);
    let threads = threads_of(pid);

    // --leave-running: the original goes on serving, unchanged.
    let images = s.path("img-leave");
    s.checkpoint(pid, &images, true);
    assert_eq!(digest(port), want, "the original's dataset changed under --leave-running");
    check_writes(port, "original");
    assert_ne!(digest(port), want);
    s.kill_tree(pid);
    let restored = s.restore(&images);
    assert_eq!(restored, pid, "restore must keep the pid");
    assert_eq!(digest(port), want, "DEBUG DIGEST changed across --leave-running and restore");
    assert_eq!(threads_of(pid), threads);

    // Three kill-mode cycles, each on the server restored before.
    for round in 0..3 {
        check_dataset(port);
        check_writes(port, &format!("round{round}"));
        want = digest(port);
        let images = s.path(&format!("img{round}"));
        s.checkpoint(pid, &images, false);
        let restored = s.restore(&images);
        assert_eq!(restored, pid, "restore must keep the pid");
        assert_eq!(digest(port), want, "DEBUG DIGEST changed in round {round}");
        assert_eq!(threads_of(pid), threads);
    }
    check_dataset(port);
    check_writes(port, "end");
    let mut r = Redis::connect(port);
    assert_eq!(r.cmd(&["GET", "written:original"]), Reply::Bulk(None), "a write made after the checkpoint is in its images");
    assert_eq!(r.cmd(&["GET", "written:round2"]).text(), "round2");
    assert_eq!(r.cmd(&["DBSIZE"]), Reply::Int(5 * PER_TYPE as i64 + 5));
    r.hang_up();
}

// ---------------------------------------------------------------- nginx

/// Fetches `path` with HTTP/1.0 (the server closes); returns the status
/// line and the body.
fn http_get(port: u16, path: &str) -> (String, Vec<u8>) {
    let mut s = connect(port);
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    hang_up(s);
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of headers");
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    (head.lines().next().unwrap_or("").to_string(), resp[split + 4..].to_vec())
}

/// Deterministic contents of `len` bytes.
fn contents(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a, the checksum the test compares.
fn checksum(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &c| (h ^ c as u64).wrapping_mul(0x100_0000_01b3))
}

/// Serves every file and checks its checksum; returns how many requests.
fn serve_all(port: u16, files: &[(String, u64)]) -> usize {
    for (name, sum) in files {
        let (status, body) = http_get(port, &format!("/{name}"));
        assert!(status.contains(" 200 "), "GET /{name}: {status}");
        assert_eq!(checksum(&body), *sum, "GET /{name}: wrong contents");
    }
    files.len()
}

fn log_lines(p: &Path) -> usize {
    std::fs::read_to_string(p).unwrap_or_default().lines().count()
}

/// nginx, a master and two workers: checkpointed (kill) and restored, it
/// serves the same files, its access log goes on in the same file (new
/// requests appended, nothing lost), and the restored master still runs
/// its workers: a reload (SIGHUP) replaces them through the master's
/// channels, and the new workers serve too.
#[test]
fn nginx_master_and_workers_serve_on_after_restore() {
    let mut s = Scene::new("nginx");
    let port = free_port();
    let www = s.path("www");
    std::fs::create_dir_all(&www).unwrap();
    let mut files = Vec::new();
    for (i, len) in [0usize, 1, 4096, 65_537, 1 << 20].into_iter().enumerate() {
        let name = format!("f{i}.bin");
        let b = contents(i as u64 + 1, len);
        std::fs::write(www.join(&name), &b).unwrap();
        files.push((name, checksum(&b)));
    }
    let d = s.dir.display().to_string();
    let conf = s.path("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             server {{ listen 127.0.0.1:{port}; root {d}/www; }}\n}}\n"
        ),
    )
    .unwrap();
    let pid = s.spawn(Command::new(program("nginx")).args(["-e", &format!("{d}/error.log"), "-p", &d, "-c"]).arg(&conf));
    let workers = wait_for("two nginx workers", 10, || {
        let mut t = tree_of(pid);
        t.sort_unstable();
        (t.len() == 3).then_some(t)
    });
    let access = s.path("access.log");
    let mut requests = serve_all(port, &files);
    requests += serve_all(port, &files);
    wait_for("the access log", 10, || (log_lines(&access) == requests).then_some(()));
    let before = std::fs::read(&access).unwrap();

    let images = s.path("img");
    s.checkpoint(pid, &images, false);
    let restored = s.restore(&images);
    assert_eq!(restored, pid, "restore must keep the pid");
    let mut tree = tree_of(pid);
    tree.sort_unstable();
    assert_eq!(tree, workers, "the workers must come back with their pids");

    requests += serve_all(port, &files);
    requests += serve_all(port, &files);
    wait_for("the access log to go on", 10, || (log_lines(&access) == requests).then_some(()));
    let after = std::fs::read(&access).unwrap();
    assert!(after.starts_with(&before), "the access log was rewritten, not appended to");

    // A reload: the master starts new workers and tells the old ones to
    // quit over its channels.
    // SAFETY: signalling the nginx master this test restored.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    let fresh = wait_for("the reload to replace both workers", 15, || {
        let t = tree_of(pid);
        (t.len() == 3 && t[1..].iter().all(|w| !workers.contains(w))).then_some(t)
    });
    assert_eq!(fresh[0], pid, "the master changed");
    requests += serve_all(port, &files);
    wait_for("the access log after the reload", 10, || (log_lines(&access) == requests).then_some(()));
    let errors = std::fs::read_to_string(s.path("error.log")).unwrap();
    assert!(!errors.contains("[alert]") && !errors.contains("[emerg]"), "nginx complained:\n{errors}");
}

// ---------------------------------------------------------------- asyncio

/// A line-protocol client of tests/servers/asyncio_server.py.
struct Line {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Line {
    fn connect(port: u16) -> Line {
        let s = connect(port);
        Line { r: BufReader::new(s.try_clone().unwrap()), w: s }
    }

    fn pipeline(&mut self, cmds: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for batch in cmds.chunks(500) {
            let mut buf = String::new();
            for c in batch {
                buf.push_str(c);
                buf.push('\n');
            }
            self.w.write_all(buf.as_bytes()).unwrap();
            for _ in batch {
                let mut l = String::new();
                self.r.read_line(&mut l).unwrap();
                assert!(l.ends_with('\n'), "reply cut short: {l:?}");
                out.push(l.trim_end().to_string());
            }
        }
        out
    }

    fn cmd(&mut self, c: &str) -> String {
        self.pipeline(&[c.to_string()]).pop().unwrap()
    }

    fn hang_up(self) {
        drop(self.r);
        hang_up(self.w);
    }
}

/// One field of the STATE reply (a flat JSON object).
fn field(state: &str, name: &str) -> String {
    let at = state.find(&format!("\"{name}\": ")).unwrap_or_else(|| panic!("no {name} in {state}")) + name.len() + 4;
    state[at..].split([',', '}']).next().unwrap().trim().trim_matches('"').to_string()
}

fn num(state: &str, name: &str) -> u64 {
    field(state, name).parse().unwrap()
}

fn query(port: u16) -> String {
    let mut c = Line::connect(port);
    let st = c.cmd("STATE");
    c.hang_up();
    st
}

/// A Python asyncio server with a dataset, per-connection counters, a
/// periodic timer, a pending one-shot timer and a client of its own over
/// loopback (a connection inside the tree): checkpointed (kill) and
/// restored twice, its state is intact and goes on from where it was.
#[test]
fn python_asyncio_server_keeps_its_state() {
    let mut s = Scene::new("asyncio");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/servers/asyncio_server.py");
    let port_file = s.path("port");
    let mut pid = s.spawn(Command::new(program("python3")).arg(&script).arg(&port_file));
    let port: u16 = wait_for("the server's port", 10, || std::fs::read_to_string(&port_file).ok()?.trim().parse().ok());
    let n = 2000;
    let mut c = Line::connect(port);
    let puts: Vec<String> = (0..n).map(|i| format!("PUT key{i} {:x}", checksum(format!("v{i}").as_bytes()))).collect();
    assert!(c.pipeline(&puts).iter().all(|r| r == "OK"));
    c.hang_up();
    wait_for("the inner client", 10, || (num(&query(port), "sent") > 5).then_some(()));
    let sum = field(&query(port), "sum");

    for round in 0..2 {
        let mut c = Line::connect(port);
        assert_eq!(c.cmd("ARM 1.0"), "OK");
        c.hang_up();
        let at = query(port);
        assert_eq!(num(&at, "armed"), num(&at, "fired") + 1, "the one-shot timer fired too early: {at}");
        let images = s.path(&format!("img{round}"));
        s.checkpoint(pid, &images, false);
        std::thread::sleep(Duration::from_millis(200));
        let restored = s.restore(&images);
        assert_eq!(restored, pid, "restore must keep the pid");
        pid = restored;

        let now = query(port);
        assert_eq!(field(&now, "sum"), sum, "the dataset changed: {now}");
        assert_eq!(num(&now, "keys"), n);
        assert_eq!(num(&now, "served"), num(&at, "served") + 1, "connections served: {at} then {now}");
        assert!(num(&now, "ticks") >= num(&at, "ticks"), "the tick counter went back: {at} then {now}");
        assert!(num(&now, "sent") >= num(&at, "sent"));
        assert_eq!(num(&now, "open"), 2, "only the inner connection and this one: {now}");
        let later = wait_for("the timers and the inner client to go on", 10, || {
            let st = query(port);
            (num(&st, "ticks") > num(&now, "ticks") + 10
                && num(&st, "sent") > num(&now, "sent") + 10
                && num(&st, "fired") == num(&at, "armed"))
            .then_some(st)
        });
        assert_eq!(num(&later, "bad"), 0, "the per-connection counter of the inner connection went wrong: {later}");
        assert_eq!(num(&later, "armed"), num(&at, "armed"));
    }
    let mut c = Line::connect(port);
    let gets: Vec<String> = (0..n).map(|i| format!("GET key{i}")).collect();
    for (i, v) in c.pipeline(&gets).iter().enumerate() {
        assert_eq!(*v, format!("{:x}", checksum(format!("v{i}").as_bytes())), "key{i}");
    }
    assert_eq!(c.cmd("PUT new 1"), "OK");
    assert_eq!(c.cmd("INC"), "1");
    assert_eq!(c.cmd("INC"), "2");
    c.hang_up();
}

// ---------------------------------------------------------------- tmux

/// A tmux server (Debian's tmux) started with `-S sock`.
struct Tmux {
    sock: PathBuf,
}

impl Tmux {
    /// `tmux -S sock -f /dev/null ARGS`, outside any user's tmux; its
    /// standard output, or the failure with its standard error.
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&self.sock)
            .args(["-f", "/dev/null"])
            .args(args)
            .env_remove("TMUX")
            .output()
            .map_err(|e| format!("run tmux: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!("tmux {args:?}: {}", String::from_utf8_lossy(&out.stderr)))
        }
    }

    /// The last count a window's loop printed in its pane.
    fn count(&self, window: &str) -> Option<u64> {
        let screen = self.run(&["capture-pane", "-p", "-t", window]).ok()?;
        screen.lines().rev().find_map(|l| l.split_whitespace().nth(1)?.parse().ok())
    }

    /// Waits until the loop of `window` prints a count above `above`.
    fn counts_past(&self, window: &str, above: u64) -> u64 {
        wait_for(&format!("tmux window {window} to count past {above}"), 20, || self.count(window).filter(|&n| n > above))
    }

    /// The pids of the panes' shells.
    fn pane_pids(&self) -> String {
        self.run(&["list-panes", "-a", "-F", "#{pane_pid}"]).unwrap_or_default()
    }
}

/// A shell loop printing "<tag> N" ten times a second.
fn tmux_loop(tag: &str) -> String {
    format!("i=0; while :; do i=$((i+1)); echo \"{tag} $i\"; sleep 0.1; done")
}

/// A tmux server with two windows, each a shell loop counting in its pane
/// (a session leader with the pane's pty as controlling terminal, and a
/// `sleep` child in the foreground): checkpointed and restored three times
/// in a row, the restored server checkpointed again each time. After each
/// restore the same shells run and `tmux capture-pane` shows both loops
/// counting on from where they were, not from 1.
#[test]
fn tmux_panes_keep_counting_across_checkpoint_restore() {
    let mut s = Scene::new("tmux");
    let t = Tmux { sock: s.path("tmux.sock") };
    t.run(&["new-session", "-d", "-s", "lpm", "-x", "100", "-y", "30", &tmux_loop("a")]).unwrap();
    t.run(&["new-window", "-t", "lpm", &tmux_loop("b")]).unwrap();
    let pid: i32 = t.run(&["display", "-p", "#{pid}"]).unwrap().trim().parse().expect("tmux server pid");
    s.pids.push(pid);
    let shells = t.pane_pids();
    let (mut a, mut b) = (t.counts_past("lpm:0", 5), t.counts_past("lpm:1", 5));
    for round in 0..3 {
        let images = s.path(&format!("img{round}"));
        s.checkpoint(pid, &images, false);
        let restored = s.restore(&images);
        assert_eq!(restored, pid, "restore must keep the pid");
        assert_eq!(t.pane_pids(), shells, "round {round}: the panes' shells changed");
        let (a2, b2) = (t.counts_past("lpm:0", a), t.counts_past("lpm:1", b));
        assert!(a2 > a && b2 > b, "round {round}: the loops did not count on ({a} -> {a2}, {b} -> {b2})");
        (a, b) = (t.counts_past("lpm:0", a2 + 3), t.counts_past("lpm:1", b2 + 3));
    }
}

/// A Python job that counts the lines it reads, echo off, and says so on
/// its stdout and through /dev/tty.
const JOB: &str = "import sys, termios\na = termios.tcgetattr(0)\na[3] &= ~termios.ECHO\ntermios.tcsetattr(0, termios.TCSANOW, a)\ntty = open('/dev/tty', 'w')\nn = 0\nfor l in sys.stdin:\n    n += 1\n    print(f'job {n} {l.strip()}', flush=True)\n    tty.write(f'tty {n}\\n')\n    tty.flush()\n";

/// A job of an interactive shell (bash with job control, in a tmux pane:
/// the user's terminal, whose master the tree does not hold) is refused
/// by a plain checkpoint, naming the terminal and `--shell-job`; with
/// `--shell-job` it is checkpointed, and `lpm restore --shell-job` typed
/// into another pane's shell brings it back there: it reads that pane's
/// keys in the foreground and prints on it, counting on from where it
/// was, its terminal with the termios it had set (echo off), its /dev/tty
/// descriptor the new terminal.
#[test]
fn shell_job_comes_back_on_the_restoring_terminal() {
    let mut s = Scene::new("shelljob");
    let t = Tmux { sock: s.path("tmux.sock") };
    let shell = "env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin TERM=screen PS1='$ ' bash --norc --noprofile";
    t.run(&["new-session", "-d", "-s", "lpm", "-x", "150", "-y", "30", shell]).unwrap();
    t.run(&["new-window", "-t", "lpm", shell]).unwrap();
    let server: i32 = t.run(&["display", "-p", "#{pid}"]).unwrap().trim().parse().expect("tmux server pid");
    s.pids.push(server);
    let job_file = s.path("job.py");
    std::fs::write(&job_file, JOB).unwrap();
    let screen = |w: &str| t.run(&["capture-pane", "-p", "-t", w]).unwrap_or_default();
    let keys = |w: &str, text: &str| {
        t.run(&["send-keys", "-t", w, "-l", text]).unwrap();
        t.run(&["send-keys", "-t", w, "Enter"]).unwrap();
    };
    keys("lpm:0", &format!("python3 -u {}", job_file.display()));
    let shell0: i32 = t.run(&["display", "-p", "-t", "lpm:0", "#{pane_pid}"]).unwrap().trim().parse().unwrap();
    let job = wait_for("the job to start", 20, || {
        let kids = std::fs::read_to_string(format!("/proc/{shell0}/task/{shell0}/children")).ok()?;
        kids.split_whitespace().next()?.parse::<i32>().ok()
    });
    keys("lpm:0", "one");
    let shows = |w: &str, text: &str, what: &str| {
        let t0 = Instant::now();
        while !screen(w).contains(text) {
            assert!(t0.elapsed() < Duration::from_secs(30), "timed out waiting for {what}; pane {w} shows:\n{}", screen(w));
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    shows("lpm:0", "job 1 one", "the job to read a line");

    let images = s.path("img");
    let plain = Command::new(LPM).args(["checkpoint", "--pid", &job.to_string(), "--images"]).arg(&images).output().unwrap();
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success(), "a shell job was checkpointed without --shell-job");
    assert!(
        err.contains("whose master is outside the tree") && err.contains("--shell-job"),
        "the refusal does not name the terminal: {err}"
    );

    let out = Command::new(LPM).args(["checkpoint", "--shell-job", "--pid", &job.to_string(), "--images"]).arg(&images).output().unwrap();
    assert!(out.status.success(), "checkpoint --shell-job failed: {}", String::from_utf8_lossy(&out.stderr));
    reap(job);
    wait_for("the job's pid to be free", 20, || (!Path::new(&format!("/proc/{job}")).exists()).then_some(()));

    keys("lpm:1", &format!("{LPM} restore --shell-job --verify --images {}", images.display()));
    s.pids.push(job);
    shows("lpm:1", "restored 1 processes", "the restore");
    let pane1 = t.run(&["display", "-p", "-t", "lpm:1", "#{pane_tty}"]).unwrap().trim().to_string();
    let fd0 = std::fs::read_link(format!("/proc/{job}/fd/0")).unwrap();
    assert_eq!(fd0, Path::new(&pane1), "the restored job's stdin is not the restoring pane's terminal");
    keys("lpm:1", "two");
    shows("lpm:1", "job 2 two", "the restored job to read a line");
    shows("lpm:1", "tty 2", "the restored job to write through /dev/tty");
    assert!(!screen("lpm:1").lines().any(|l| l.trim() == "two"), "echo is back on: the termios were not restored\n{}", screen("lpm:1"));
}
