//! `lpm bench clients`: what the users of a partition feel while it moves
//! (issue 11, item 6).
//!
//! A lab of its own (two hosts and the client namespace, as `lpm bench
//! migrate`), one partition running a real server, and clients in the
//! client namespace, each a thread of this process in a request/response
//! loop that checks every answer: `--clients` on connections they hold,
//! and one more that opens a new connection for every request (so one of
//! its connections opens during the stop). The partition is moved
//! h1 → h2 → h1 ... `--migrations` times while they run. Per migration
//! the benchmark prints the downtime the migration's report gives and each
//! client's longest wait between sending a request and getting its answer
//! in the migration's window (from the migration's start until every
//! client has had answers after its end), and the TCP retransmissions the
//! clients' sockets counted meanwhile (TCP_INFO tcpi_total_retrans); then
//! p50 and p99 of both over all migrations.
//!
//! The servers (`--server`):
//! - `tcp`: the project's echo server (crates/cli/bench/echo_server.c):
//!   it holds `--mib` MiB and rewrites `--rate` MiB/s of it, and answers
//!   each line with the line, the connection's request count and a hash
//!   of the line; at the end it checks every page of its memory.
//! - `redis`: redis-server; each client SETs its key to a new value and
//!   GETs it back in one round trip.
//! - `nginx`: a master and 4 workers serving eight files; keep-alive
//!   clients fetch them and compare every byte.
//! - `postgres`: PostgreSQL; each client inserts rows (`RETURNING` the
//!   key, checked); afterwards the table must hold exactly the rows the
//!   clients saw acknowledged, none lost, none more.
//!
//! For the real servers the memory and its dirtying come from the dirtier
//! of `lpm bench migrate`, a second process in the partition beside the
//! server (the partition's init is `sh -c 'dirtier MIB RATE & exec
//! SERVER'`); at the end it checks every page.
//!
//! Any wrong answer, client error, failed migration or memory found wrong
//! fails the benchmark, after the tables are printed. The lab goes away
//! however the benchmark ends (see `bench_migrate`).

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use lpm_agent::api::{MigrateRequest, Request, Response};
use lpm_host::lab::Lab;
use lpm_host::partition::PartitionSpec;
use lpm_migrate::report::{Outcome, Report};
use serde_json::{json, Value};

use crate::bench_migrate::{fmt_f, Bench};

/// The PostgreSQL client of the integration tests (protocol 3.0, simple
/// queries): one client for both, so the bench checks what the tests do.
#[allow(dead_code)]
#[path = "../tests/common/pg.rs"]
mod pg;

/// The echo server, compiled into the lab directory at run time.
const ECHO_SERVER_C: &str = include_str!("../bench/echo_server.c");
/// The downtime asked of every migration (the default of `lpm migrate`).
const MAX_DOWNTIME_MS: u64 = 50;
/// Pre-copy time limit; at it the migration switches over anyway.
const MAX_TIME_S: u64 = 60;
/// Memory limit of the partition beyond `--mib`: the echo server's
/// generation table and libc; for the real servers, the servers.
const TCP_SLACK: u64 = 128 << 20;
const SERVER_SLACK: u64 = 512 << 20;
/// Connect and read timeout of every client: far above any stop, so a
/// client that waits this long is an error, not a figure.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the server may take to start (writing its memory included).
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the memory check may take at the end.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(180);
/// Answers every client must have after a migration's end before its
/// window closes: the request in flight during the stop is among them.
const AFTER_ANSWERS: u64 = 3;
/// How long the clients may take to get those answers.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(60);
/// Files nginx serves.
const HTTP_FILES: u64 = 8;

/// The server in the partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Server {
    /// The project's echo server, holding and dirtying the memory itself.
    Tcp,
    /// redis-server, SET and GET.
    Redis,
    /// nginx, a master and 4 workers, keep-alive GETs.
    Nginx,
    /// PostgreSQL, inserts.
    Postgres,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Tcp => "tcp",
            Server::Redis => "redis",
            Server::Nginx => "nginx",
            Server::Postgres => "postgres",
        }
    }

    fn port(self) -> u16 {
        match self {
            Server::Tcp => 7000,
            Server::Redis => 6379,
            Server::Nginx => 80,
            Server::Postgres => 5432,
        }
    }
}

/// `lpm bench clients`
#[derive(Args, Debug, Clone)]
pub struct ClientsBench {
    /// The server in the partition.
    #[arg(long, value_enum, default_value_t = Server::Tcp)]
    pub server: Server,
    /// Memory the partition holds and dirties, MiB.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
    /// How fast it rewrites that memory, MiB/s.
    #[arg(long, default_value_t = 50)]
    pub rate: u64,
    /// Clients on connections they hold (one more opens a new connection
    /// per request).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Migrations, h1 → h2, h2 → h1, ...
    #[arg(long, default_value_t = 20)]
    pub migrations: usize,
    /// Leave out the client that opens a connection per request (to see
    /// what the held connections alone make the stop).
    #[arg(long)]
    pub no_new_connection: bool,
    /// Each client's pause between an answer and its next request, ms.
    #[arg(long, default_value_t = 2)]
    pub think_ms: u64,
    /// Print the migrations and the summary as JSON.
    #[arg(long)]
    pub json: bool,
}

// ------------------------------------------------------------- clients

/// A splitmix64 finalizer: request nonces and file contents.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// FNV-1a, 64 bits (what the echo server answers).
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| (h ^ c as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The contents of nginx's file `i`: 1000 to about 8 KiB of bytes that
/// depend on the file and the position.
fn http_file(i: u64) -> Vec<u8> {
    let len = 1000 + i * 1031;
    (0..len).map(|k| (mix(i << 32 | k) >> 24) as u8).collect()
}

/// One client connection to the server, speaking its protocol.
enum Conn {
    Tcp { w: TcpStream, r: BufReader<TcpStream>, sent: u64 },
    Redis { w: TcpStream, r: BufReader<TcpStream> },
    Http { w: TcpStream, r: BufReader<TcpStream>, close: bool },
    Pg(pg::Pg),
}

/// A TCP connection from the calling thread's namespace, Nagle off.
fn dial(addr: SocketAddr) -> Result<(TcpStream, BufReader<TcpStream>), String> {
    let s = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).map_err(|e| format!("connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    Ok((s, r))
}

fn read_line(r: &mut BufReader<TcpStream>, what: &str) -> Result<String, String> {
    let mut l = String::new();
    match r.read_line(&mut l) {
        Ok(0) => Err(format!("{what}: the server closed the connection")),
        Ok(_) => Ok(l),
        Err(e) => Err(format!("{what}: {e}")),
    }
}

/// A RESP array of bulk strings.
fn resp(args: &[&str]) -> String {
    let mut s = format!("*{}\r\n", args.len());
    for a in args {
        let _ = write!(s, "${}\r\n{a}\r\n", a.len());
    }
    s
}

impl Conn {
    /// Connects to `server` at `addr`; `close` asks an HTTP server to close
    /// after its answer.
    fn open(server: Server, addr: SocketAddr, close: bool) -> Result<Conn, String> {
        Ok(match server {
            Server::Tcp => {
                let (w, r) = dial(addr)?;
                Conn::Tcp { w, r, sent: 0 }
            }
            Server::Redis => {
                let (w, r) = dial(addr)?;
                Conn::Redis { w, r }
            }
            Server::Nginx => {
                let (w, r) = dial(addr)?;
                Conn::Http { w, r, close }
            }
            Server::Postgres => Conn::Pg(pg::Pg::connect(addr, CLIENT_TIMEOUT)?),
        })
    }

    fn stream(&self) -> &TcpStream {
        match self {
            Conn::Tcp { w, .. } | Conn::Redis { w, .. } | Conn::Http { w, .. } => w,
            Conn::Pg(p) => p.socket(),
        }
    }

    /// Request `seq` of client `id` and its answer, checked; for
    /// PostgreSQL the key inserted.
    fn exchange(&mut self, id: u64, seq: u64) -> Result<Option<i64>, String> {
        let nonce = mix(id << 40 ^ seq);
        match self {
            Conn::Tcp { w, r, sent } => {
                let line = format!("{id} {seq} {nonce:016x}");
                w.write_all(format!("{line}\n").as_bytes()).map_err(|e| format!("request {seq}: {e}"))?;
                *sent += 1;
                let got = read_line(r, &format!("answer to request {seq}"))?;
                let want = format!("{line} {sent} {:016x}\n", fnv1a(line.as_bytes()));
                if got != want {
                    return Err(format!("request {seq}: answer {got:?}, expected {want:?}"));
                }
                Ok(None)
            }
            Conn::Redis { w, r } => {
                let key = format!("bench:{id}");
                let val = format!("{seq}:{nonce:016x}");
                let cmd = resp(&["SET", &key, &val]) + &resp(&["GET", &key]);
                w.write_all(cmd.as_bytes()).map_err(|e| format!("request {seq}: {e}"))?;
                let ok = read_line(r, &format!("answer to SET {seq}"))?;
                if ok != "+OK\r\n" {
                    return Err(format!("request {seq}: SET answered {ok:?}"));
                }
                let head = read_line(r, &format!("answer to GET {seq}"))?;
                let want = format!("${}\r\n", val.len());
                if head != want {
                    return Err(format!("request {seq}: GET answered {head:?}, expected {want:?}"));
                }
                let mut body = vec![0; val.len() + 2];
                r.read_exact(&mut body).map_err(|e| format!("value of GET {seq}: {e}"))?;
                if body != format!("{val}\r\n").as_bytes() {
                    return Err(format!("request {seq}: GET gave {:?}, expected {val:?}", String::from_utf8_lossy(&body)));
                }
                Ok(None)
            }
            Conn::Http { w, r, close } => {
                let f = seq % HTTP_FILES;
                let conn = if *close { "close" } else { "keep-alive" };
                let req = format!("GET /f{f}.bin HTTP/1.1\r\nHost: bench\r\nConnection: {conn}\r\n\r\n");
                w.write_all(req.as_bytes()).map_err(|e| format!("request {seq}: {e}"))?;
                let status = read_line(r, &format!("status of request {seq}"))?;
                if !status.starts_with("HTTP/1.1 200 ") {
                    return Err(format!("request {seq} for /f{f}.bin: status {status:?}"));
                }
                let mut len = None;
                loop {
                    let h = read_line(r, &format!("headers of request {seq}"))?;
                    if h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            len = v.trim().parse::<usize>().ok();
                        }
                    }
                }
                let want = http_file(f);
                if len != Some(want.len()) {
                    return Err(format!("request {seq} for /f{f}.bin: content length {len:?}, expected {}", want.len()));
                }
                let mut body = vec![0; want.len()];
                r.read_exact(&mut body).map_err(|e| format!("body of request {seq}: {e}"))?;
                if body != want {
                    let at = body.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
                    return Err(format!("request {seq} for /f{f}.bin: the body differs from byte {at}"));
                }
                Ok(None)
            }
            Conn::Pg(p) => {
                let n = (id * 1_000_000_000 + seq) as i64;
                let rows = p.query(&format!("INSERT INTO bench VALUES ({n}, {id}) RETURNING n"))?;
                if rows != vec![vec![Some(n.to_string())]] {
                    return Err(format!("insert {n}: returned {rows:?}"));
                }
                Ok(Some(n))
            }
        }
    }

    /// Says goodbye where the protocol has a goodbye.
    fn close(self) -> Result<(), String> {
        match self {
            Conn::Pg(p) => p.close(),
            _ => Ok(()),
        }
    }
}

/// The retransmissions the kernel counted on a socket (TCP_INFO
/// tcpi_total_retrans: SYNs included).
fn total_retrans(s: &TcpStream) -> u64 {
    let mut info = [0u8; 104];
    match lpm_sys::net::getsockopt(s.as_fd(), libc::IPPROTO_TCP, libc::TCP_INFO, &mut info) {
        // struct tcp_info: tcpi_total_retrans is the u32 at offset 100.
        Ok(n) if n >= 104 => u32::from_ne_bytes([info[100], info[101], info[102], info[103]]) as u64,
        _ => 0,
    }
}

/// What one client shows the benchmark while it runs.
struct Stat {
    who: String,
    /// Answers checked.
    answers: AtomicU64,
    /// The longest wait for an answer since the benchmark last reset it, µs.
    window_us: AtomicU64,
    /// Retransmissions its sockets counted, all of them together.
    retrans: AtomicU64,
    /// Its error, once it met one (it stops then).
    error: Mutex<Option<String>>,
}

/// The clients and their threads.
struct Clients {
    stop: Arc<AtomicBool>,
    stats: Vec<Arc<Stat>>,
    threads: Vec<std::thread::JoinHandle<Vec<i64>>>,
}

impl Clients {
    /// Starts `n` clients on held connections and, with `fresh`, one
    /// opening a connection per request (the last), each a thread that
    /// joins the client namespace first.
    fn start(lab: &Lab, server: Server, addr: SocketAddr, n: usize, fresh: bool, think: Duration) -> Result<Clients> {
        let mut c = Clients { stop: Arc::new(AtomicBool::new(false)), stats: Vec::new(), threads: Vec::new() };
        for i in 0..n + fresh as usize {
            let fresh = i == n;
            let id = i as u64 + 1;
            let stat = Arc::new(Stat {
                who: if fresh { format!("client {id} (a connection per request)") } else { format!("client {id}") },
                answers: AtomicU64::new(0),
                window_us: AtomicU64::new(0),
                retrans: AtomicU64::new(0),
                error: Mutex::new(None),
            });
            let ns = lab.netns_of("client")?.fd()?;
            let (s, stop) = (stat.clone(), c.stop.clone());
            let t = std::thread::Builder::new()
                .name(format!("bench-client-{id}"))
                .spawn(move || {
                    let mut acked = Vec::new();
                    if let Err(e) = client_loop(server, addr, id, fresh, ns, &s, &stop, think, &mut acked) {
                        *s.error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    }
                    acked
                })
                .context("start a client thread")?;
            c.stats.push(stat);
            c.threads.push(t);
        }
        Ok(c)
    }

    fn answers(&self) -> Vec<u64> {
        self.stats.iter().map(|s| s.answers.load(Ordering::Relaxed)).collect()
    }

    /// The first client error, with the client.
    fn error(&self) -> Option<String> {
        self.stats.iter().find_map(|s| s.error.lock().unwrap_or_else(|e| e.into_inner()).as_ref().map(|e| format!("{}: {e}", s.who)))
    }

    /// Waits until every client has `more` answers beyond `from`; fails
    /// at the first client error.
    fn wait_progress(&self, from: &[u64], more: u64, when: &str) -> Result<()> {
        let t = Instant::now();
        loop {
            if let Some(e) = self.error() {
                bail!("{when}: {e}");
            }
            let now = self.answers();
            if now.iter().zip(from).all(|(n, f)| *n >= f + more) {
                return Ok(());
            }
            if t.elapsed() > PROGRESS_TIMEOUT {
                bail!("{when}: the clients did not get {more} answers each within {PROGRESS_TIMEOUT:?}: {now:?} from {from:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the clients; the keys each saw acknowledged (PostgreSQL) and
    /// the answers checked, or the first error one met.
    fn finish(mut self) -> Result<(Vec<Vec<i64>>, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut out = Vec::new();
        for (t, s) in std::mem::take(&mut self.threads).into_iter().zip(&self.stats) {
            out.push(t.join().map_err(|_| anyhow!("{} panicked", s.who))?);
        }
        if let Some(e) = self.error() {
            bail!("{e}");
        }
        Ok((out, self.answers().iter().sum()))
    }
}

/// One client: requests until told to stop, every answer checked.
#[allow(clippy::too_many_arguments)]
fn client_loop(
    server: Server,
    addr: SocketAddr,
    id: u64,
    fresh: bool,
    ns: OwnedFd,
    s: &Stat,
    stop: &AtomicBool,
    think: Duration,
    acked: &mut Vec<i64>,
) -> Result<(), String> {
    nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("join the client namespace: {e}"))?;
    let mut held = if fresh { None } else { Some(Conn::open(server, addr, false)?) };
    let mut seq = 0;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let t = Instant::now();
        let key = match held.as_mut() {
            Some(c) => {
                let k = c.exchange(id, seq)?;
                s.retrans.store(total_retrans(c.stream()), Ordering::Relaxed);
                k
            }
            None => {
                let mut c = Conn::open(server, addr, true).map_err(|e| format!("request {seq}: {e}"))?;
                let k = c.exchange(id, seq)?;
                s.retrans.fetch_add(total_retrans(c.stream()), Ordering::Relaxed);
                c.close()?;
                k
            }
        };
        s.window_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        acked.extend(key);
        s.answers.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(think);
    }
    match held {
        Some(c) => c.close(),
        None => Ok(()),
    }
}

// ------------------------------------------------------------ results

/// One migration as the clients saw it.
struct Row {
    n: usize,
    from: String,
    to: String,
    report: Report,
    /// Longest wait of each client on a held connection, ms.
    waits_ms: Vec<f64>,
    /// Longest wait of the client opening a connection per request, ms
    /// (NaN without that client).
    fresh_wait_ms: f64,
    /// Retransmissions the clients' sockets counted in the window.
    retrans: u64,
    /// Of them, the new-connection client's.
    fresh_retrans: u64,
}

impl Row {
    fn stop_field(&self, f: impl Fn(&lpm_migrate::report::StopBreakdown) -> f64) -> f64 {
        self.report.stop.as_ref().map_or(f64::NAN, f)
    }

    fn to_json(&self) -> Value {
        json!({
            "n": self.n,
            "from": self.from,
            "to": self.to,
            "downtime_ms": self.report.downtime_ms,
            "total_ms": self.report.total_ms,
            "clients_longest_wait_ms": self.waits_ms,
            "new_connection_longest_wait_ms": self.fresh_wait_ms,
            "retransmissions": self.retrans,
            "new_connection_retransmissions": self.fresh_retrans,
            "report": self.report,
        })
    }
}

/// A note on the migrations auto-converge throttled: their clients' waits
/// include the throttle's, before the stop.
fn throttled(rows: &[Row]) -> String {
    let t: Vec<String> =
        rows.iter().filter(|r| r.report.max_throttle > 0.0).map(|r| format!("#{} {:.0} %", r.n, r.report.max_throttle * 100.0)).collect();
    if t.is_empty() {
        String::new()
    } else {
        format!(";\n auto-converge throttled the partition's CPU before the stop (the clients' waits include it): {}", t.join(", "))
    }
}

/// The nearest-rank percentile `p` of `v` (NaN when empty).
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

/// The figures over all migrations.
struct Summary {
    downtime: (f64, f64),
    /// Over every held client's longest wait in every migration.
    wait: (f64, f64),
    fresh_wait: (f64, f64),
    retrans: u64,
    migrations_with_retrans: usize,
}

fn summarize(rows: &[Row]) -> Summary {
    let down: Vec<f64> = rows.iter().map(|r| r.report.downtime_ms).collect();
    let waits: Vec<f64> = rows.iter().flat_map(|r| r.waits_ms.iter().copied()).collect();
    let fresh: Vec<f64> = rows.iter().map(|r| r.fresh_wait_ms).collect();
    let p = |v: &[f64]| (percentile(v, 50.0), percentile(v, 99.0));
    Summary {
        downtime: p(&down),
        wait: p(&waits),
        fresh_wait: p(&fresh),
        retrans: rows.iter().map(|r| r.retrans).sum(),
        migrations_with_retrans: rows.iter().filter(|r| r.retrans > 0).count(),
    }
}

fn render(a: &ClientsBench, rows: &[Row], sum: &Summary, tail: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "server {}: {} MiB dirtied at {} MiB/s, {} clients on held connections{}, think {} ms\n",
        a.server.name(),
        a.mib,
        a.rate,
        a.clients,
        if a.no_new_connection { "" } else { " + 1 opening a connection per request" },
        a.think_ms
    );
    let _ = writeln!(
        s,
        "{:>3} {:>8} {:>8} {:>9} {:>7} {:>8} {:>8} {:>8} {:>10} {:>10} {:>9} {:>7}",
        "#", "move", "drain", "down ms", "freeze", "transfer", "restore", "handover", "wait p50", "wait max", "new conn", "retrans"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "{:>3} {:>8} {:>8} {:>9.1} {:>7} {:>8} {:>8} {:>8} {:>10} {:>10} {:>9} {:>7}",
            r.n,
            format!("{}>{}", r.from, r.to),
            fmt_f(r.stop_field(|b| b.drain_ms), 1),
            r.report.downtime_ms,
            fmt_f(r.stop_field(|b| b.freeze_ms), 1),
            fmt_f(r.stop_field(|b| b.transfer_ms), 1),
            fmt_f(r.stop_field(|b| b.restore_ms), 1),
            fmt_f(r.stop_field(|b| b.handover_ms), 1),
            fmt_f(percentile(&r.waits_ms, 50.0), 1),
            fmt_f(r.waits_ms.iter().copied().fold(f64::NAN, f64::max), 1),
            fmt_f(r.fresh_wait_ms, 1),
            r.retrans
        );
    }
    let _ = writeln!(
        s,
        "\n(drain: before the stop, connection requests held while the handshakes under way finish; down ms: from the stop\n until the target's copy runs (the drain not included);\n wait: each held client's longest wait for an answer in the migration's window, p50 and max over the clients;\n new conn: the longest wait, connecting included, of the client opening a connection per request (a request\n held from the drain's start waits drain + downtime);\n retrans: TCP retransmissions all clients' sockets counted in the window{})",
        throttled(rows)
    );
    let _ = writeln!(s, "\nlongest wait of each held client per migration, ms:");
    for r in rows {
        let w: Vec<String> = r.waits_ms.iter().map(|w| format!("{w:.1}")).collect();
        let _ = writeln!(s, "{:>3}  {}", r.n, w.join(" "));
    }
    let _ = writeln!(
        s,
        "\nover {} migrations: downtime p50 {} ms p99 {} ms; held clients' longest wait p50 {} ms p99 {} ms; \
         new-connection client p50 {} ms p99 {} ms; {} retransmissions in {} migrations",
        rows.len(),
        fmt_f(sum.downtime.0, 1),
        fmt_f(sum.downtime.1, 1),
        fmt_f(sum.wait.0, 1),
        fmt_f(sum.wait.1, 1),
        fmt_f(sum.fresh_wait.0, 1),
        fmt_f(sum.fresh_wait.1, 1),
        sum.retrans,
        sum.migrations_with_retrans
    );
    s.push_str(tail);
    s
}

// ------------------------------------------------------------ servers

/// Compiles `src` into `dir/name`.
fn compile(dir: &Path, name: &str, src: &str) -> Result<PathBuf> {
    let c = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    std::fs::write(&c, src).with_context(|| format!("write {}", c.display()))?;
    let out = std::process::Command::new("gcc")
        .args(["-O2", "-Wall", "-pthread", "-o"])
        .arg(&bin)
        .arg(&c)
        .stdin(std::process::Stdio::null())
        .output()
        .context("run gcc (needed to build the benchmark's server)")?;
    if !out.status.success() {
        bail!("gcc {} failed: {}", c.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(bin)
}

/// The first of `names` found in the usual program directories.
fn program(names: &[&str]) -> Result<PathBuf> {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        for n in names {
            let p = Path::new(dir).join(n);
            if p.exists() {
                return Ok(p);
            }
        }
    }
    bail!("{} is not installed: run scripts/setup.sh", names[0])
}

/// The bin directory of the newest PostgreSQL Debian installed.
fn pg_bin() -> Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, b): &(u32, PathBuf)| b.join("postgres").exists())
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| anyhow!("PostgreSQL is not installed under /usr/lib/postgresql: run scripts/setup.sh"))
}

/// Runs the partition's command under `sh`: the dirtier in the
/// background, then the server in the shell's place.
fn with_dirtier(dirtier: &Path, a: &ClientsBench, server: &[String]) -> Vec<String> {
    let quoted: Vec<String> = server.iter().map(|s| format!("'{}'", s.replace('\'', r"'\''"))).collect();
    vec!["/bin/sh".into(), "-c".into(), format!("'{}' {} {} & exec {}", dirtier.display(), a.mib, a.rate, quoted.join(" "))]
}

/// Writes what the server needs into `dir` and returns the partition's
/// command, its memory limit and the console-log text that says it is
/// ready (None: it is ready when it accepts a connection).
fn prepare(b: &Bench, a: &ClientsBench, dir: &Path) -> Result<(Vec<String>, u64, Option<&'static str>)> {
    let port = a.server.port().to_string();
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let d = dir.display().to_string();
    Ok(match a.server {
        Server::Tcp => {
            let bin = compile(b.lab.dir(), "echo_server", ECHO_SERVER_C)?;
            (vec![bin.display().to_string(), port, a.mib.to_string(), a.rate.to_string()], (a.mib << 20) + TCP_SLACK, Some("ready port="))
        }
        Server::Redis => {
            let redis = program(&["redis-server"])?;
            let argv: Vec<String> = [
                redis.display().to_string().as_str(),
                "--port",
                &port,
                "--bind",
                "0.0.0.0",
                "--protected-mode",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                &d,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            (with_dirtier(&b.dirtier, a, &argv), (a.mib << 20) + SERVER_SLACK, Some("Ready to accept connections"))
        }
        Server::Nginx => {
            let nginx = program(&["nginx"])?;
            let www = dir.join("www");
            std::fs::create_dir_all(&www)?;
            for i in 0..HTTP_FILES {
                std::fs::write(www.join(format!("f{i}.bin")), http_file(i))?;
            }
            let conf = dir.join("nginx.conf");
            std::fs::write(
                &conf,
                format!(
                    "daemon off;\nmaster_process on;\nworker_processes 4;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
                     events {{ worker_connections 256; }}\n\
                     http {{\n  access_log off;\n  keepalive_requests 100000000;\n  keepalive_timeout 3600s;\n  \
                     client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
                     uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
                     server {{ listen {port}; root {d}/www; }}\n}}\n"
                ),
            )?;
            let argv = vec![
                nginx.display().to_string(),
                "-e".into(),
                format!("{d}/error.log"),
                "-p".into(),
                d.clone(),
                "-c".into(),
                conf.display().to_string(),
            ];
            (with_dirtier(&b.dirtier, a, &argv), (a.mib << 20) + SERVER_SLACK, None)
        }
        Server::Postgres => {
            let bin = pg_bin()?;
            let data = dir.join("pgdata");
            std::fs::create_dir_all(&data)?;
            let st = std::process::Command::new("chown").arg("postgres:postgres").arg(&data).status().context("run chown")?;
            if !st.success() {
                bail!("chown postgres {} failed", data.display());
            }
            let out = std::process::Command::new("setpriv")
                .args(["--reuid=postgres", "--regid=postgres", "--clear-groups", "--"])
                .arg(bin.join("initdb"))
                .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--no-instructions", "-D"])
                .arg(&data)
                .stdin(std::process::Stdio::null())
                .output()
                .context("run initdb")?;
            if !out.status.success() {
                bail!("initdb: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            }
            let mut hba = std::fs::OpenOptions::new().append(true).open(data.join("pg_hba.conf"))?;
            writeln!(hba, "host all all 0.0.0.0/0 trust")?;
            let mut argv: Vec<String> =
                ["setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups", "--"].iter().map(|s| s.to_string()).collect();
            argv[0] = program(&["setpriv"])?.display().to_string();
            argv.push(bin.join("postgres").display().to_string());
            argv.extend(["-D".to_string(), data.display().to_string()]);
            // Default shared buffers, as a new user runs it; no huge pages
            // (none reserved), no unix socket, and no fsync: the moves keep
            // memory and page cache, durability on disk is not measured.
            for c in [
                "listen_addresses=*".to_string(),
                format!("port={port}"),
                "unix_socket_directories=".to_string(),
                "huge_pages=off".to_string(),
                "fsync=off".to_string(),
                format!("max_connections={}", a.clients + 20),
            ] {
                argv.extend(["-c".to_string(), c]);
            }
            (with_dirtier(&b.dirtier, a, &argv), (a.mib << 20) + SERVER_SLACK, Some("database system is ready to accept connections"))
        }
    })
}

/// Polls the console log of `name` on `host` until it holds `text`.
fn wait_log(b: &Bench, host: &str, name: &str, text: &str, timeout: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        let log = b.logs(host, name)?;
        if log.contains(text) {
            return Ok(());
        }
        if t.elapsed() > timeout {
            bail!("partition {name} on {host} printed no {text:?} within {timeout:?}; console log:\n{log}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on a thread in the client namespace.
fn in_client<T: Send>(lab: &Lab, f: impl FnOnce() -> Result<T, String> + Send) -> Result<T> {
    let ns = lab.netns_of("client")?.fd()?;
    lpm_sys::net::in_netns(ns.as_fd(), f)?.map_err(|e| anyhow!(e))
}

/// Waits until the server accepts a connection from the client namespace.
fn wait_accepts(lab: &Lab, addr: SocketAddr, timeout: Duration) -> Result<()> {
    in_client(lab, || {
        let t = Instant::now();
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
                Ok(_) => return Ok(()),
                Err(e) if t.elapsed() > timeout => return Err(format!("{addr} accepted no connection within {timeout:?}: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    })
}

/// The pid (seen from here) of the dirtier beside the server: a child of
/// the partition's init named `dirtier`.
fn dirtier_pid(init: i32) -> Result<i32> {
    let children =
        std::fs::read_to_string(format!("/proc/{init}/task/{init}/children")).with_context(|| format!("children of pid {init}"))?;
    for c in children.split_whitespace().filter_map(|c| c.parse::<i32>().ok()) {
        if std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "dirtier") {
            return Ok(c);
        }
    }
    bail!("no dirtier among the children ({}) of the partition's init {init}", children.trim())
}

/// Checks every page of the memory the partition dirtied; the check's
/// line ("OK ...").
fn verify_memory(b: &Bench, a: &ClientsBench, name: &str, host: &str, addr: SocketAddr) -> Result<String> {
    let line = if a.server == Server::Tcp {
        in_client(&b.lab, move || {
            let (mut w, mut r) = dial(addr)?;
            w.set_read_timeout(Some(VERIFY_TIMEOUT)).map_err(|e| e.to_string())?;
            w.write_all(b"verify\n").map_err(|e| format!("ask for the memory check: {e}"))?;
            read_line(&mut r, "the memory check")
        })?
    } else {
        let p = b.show(host, name)?;
        let init = p.pid.ok_or_else(|| anyhow!("{name} runs on {host} without a pid"))?;
        let pid = dirtier_pid(init)?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGUSR1)
            .with_context(|| format!("SIGUSR1 to the dirtier (pid {pid})"))?;
        b.wait_line(host, name, "verify 1 ", VERIFY_TIMEOUT)?
    };
    let line = line.trim().trim_start_matches("verify ").trim_start_matches("1 ").to_string();
    if !line.starts_with("OK") {
        bail!("the partition's memory is wrong after the moves: {line}");
    }
    Ok(line)
}

/// Asks `from` to move `name` to `to`; the report of a completed
/// migration, an error otherwise.
fn migrate(b: &Bench, name: &str, from: &str, to: &str) -> Result<Report> {
    let target = b.lab.host(to).ok_or_else(|| anyhow!("no host {to} in the benchmark's lab"))?;
    // Built from JSON so that fields other branches add to the request
    // (each optional, by the protocol's rule) take their defaults.
    let req: MigrateRequest = serde_json::from_value(json!({
        "name": name,
        "target": to,
        "target_addr": target.listen.to_string(),
        "max_downtime_ms": MAX_DOWNTIME_MS,
        "max_total_s": MAX_TIME_S,
        "force": true,
        "streams": 1,
        "compress": null,
        "validate_only": false,
    }))
    .context("build the migrate request")?;
    let report = match b.client(from)?.call_with_progress(&Request::Migrate(req), |_| {})? {
        Response::Report(r) => *r,
        other => bail!("unexpected answer to migrate {name}: {other:?}"),
    };
    if report.outcome != Outcome::Completed {
        bail!("migration {from} -> {to} of {name}: {}", report.outcome);
    }
    let p = b.show(to, name)?;
    if p.host != to || p.state != "running" {
        bail!("after the migration to {to}, {name} is {} on {}", p.state, p.host);
    }
    Ok(report)
}

/// The moves, with the clients running; the rows, and the error that
/// ended them early if one did.
fn moves(b: &Bench, a: &ClientsBench, name: &str, clients: &Clients) -> (Vec<Row>, Result<()>) {
    let mut rows = Vec::new();
    let held = a.clients;
    for n in 1..=a.migrations {
        b.teardown.park_if_stopping();
        let (from, to) = if n % 2 == 1 { ("h1", "h2") } else { ("h2", "h1") };
        for s in &clients.stats {
            s.window_us.store(0, Ordering::Relaxed);
        }
        let retrans_before: Vec<u64> = clients.stats.iter().map(|s| s.retrans.load(Ordering::Relaxed)).collect();
        let report = match migrate(b, name, from, to) {
            Ok(r) => r,
            Err(e) => return (rows, Err(e.context(format!("migration {n}")))),
        };
        let at = clients.answers();
        if let Err(e) = clients.wait_progress(&at, AFTER_ANSWERS, &format!("after migration {n} ({from} -> {to})")) {
            return (rows, Err(e));
        }
        let waits: Vec<f64> = clients.stats.iter().map(|s| s.window_us.load(Ordering::Relaxed) as f64 / 1e3).collect();
        let retrans: Vec<u64> =
            clients.stats.iter().zip(&retrans_before).map(|(s, b)| s.retrans.load(Ordering::Relaxed).saturating_sub(*b)).collect();
        let row = Row {
            n,
            from: from.into(),
            to: to.into(),
            waits_ms: waits[..held].to_vec(),
            fresh_wait_ms: waits.get(held).copied().unwrap_or(f64::NAN),
            retrans: retrans.iter().sum(),
            fresh_retrans: retrans.get(held).copied().unwrap_or(0),
            report,
        };
        eprintln!(
            "   {n}: {from} -> {to} downtime {:.1} ms, longest wait {} ms (new connection {} ms), {} retransmissions",
            row.report.downtime_ms,
            fmt_f(row.waits_ms.iter().copied().fold(f64::NAN, f64::max), 1),
            fmt_f(row.fresh_wait_ms, 1),
            row.retrans
        );
        rows.push(row);
    }
    (rows, Ok(()))
}

/// What ran: the rows, answers checked, and the checks at the end.
struct Ran {
    rows: Vec<Row>,
    answers: u64,
    /// The memory check's line, the database check's.
    checks: Vec<String>,
}

fn bench_in(b: &Bench, a: &ClientsBench, name: &str, ip: Ipv4Addr) -> Result<Ran> {
    let dir = b.lab.dir().join(format!("{}-files", a.server.name()));
    let (command, memory, ready) = prepare(b, a, &dir)?;
    let spec = PartitionSpec {
        name: name.to_string(),
        command,
        memory: Some(memory),
        cpus: None,
        rt_runtime_us: None,
        ip: Some(format!("{ip}/24")),
        mac: None,
        volumes: vec![b.lab.dir().to_path_buf()],
        isolation: Default::default(),
    };
    match b.client("h1")?.call(&Request::Create(spec))? {
        Response::Partition(_) => {}
        other => bail!("unexpected answer to create {name}: {other:?}"),
    }
    let addr = SocketAddr::from((ip, a.server.port()));
    eprintln!("== waiting for {} in partition {name} ({addr}) to write its {} MiB", a.server.name(), a.mib);
    if a.server != Server::Tcp {
        b.wait_line("h1", name, "ready size=", READY_TIMEOUT)?;
    }
    match ready {
        Some(text) => wait_log(b, "h1", name, text, READY_TIMEOUT)?,
        None => wait_accepts(&b.lab, addr, READY_TIMEOUT)?,
    }
    if a.server == Server::Postgres {
        in_client(&b.lab, move || {
            let mut p = pg::Pg::connect(addr, CLIENT_TIMEOUT)?;
            p.query("CREATE TABLE bench (n bigint PRIMARY KEY, client integer NOT NULL)")?;
            p.close()
        })
        .context("create the table")?;
    }
    let fresh = !a.no_new_connection;
    let clients = Clients::start(&b.lab, a.server, addr, a.clients, fresh, Duration::from_millis(a.think_ms))?;
    let first = clients.wait_progress(&vec![0; clients.stats.len()], AFTER_ANSWERS, "before the first migration");
    let (rows, moved) = match first {
        Ok(()) => {
            eprintln!("== {} clients answered; {} migrations", clients.stats.len(), a.migrations);
            moves(b, a, name, &clients)
        }
        Err(e) => (Vec::new(), Err(e)),
    };
    let answers: u64 = clients.answers().iter().sum();
    let finished = clients.finish();
    let mut out = Ran { rows, answers, checks: Vec::new() };
    // Print what was measured before failing on what went wrong.
    let fail = |out: Ran, e: anyhow::Error| -> Result<Ran> {
        if !out.rows.is_empty() {
            let sum = summarize(&out.rows);
            eprint!("{}", render(a, &out.rows, &sum, ""));
        }
        Err(e)
    };
    if let Err(e) = moved {
        return fail(out, e);
    }
    let acked = match finished {
        Ok((k, answers)) => {
            out.answers = answers;
            k
        }
        Err(e) => return fail(out, e.context("a client failed")),
    };
    let host = if a.migrations % 2 == 1 { "h2" } else { "h1" };
    match verify_memory(b, a, name, host, addr) {
        Ok(l) => out.checks.push(format!("memory: {l}")),
        Err(e) => return fail(out, e),
    }
    if a.server == Server::Postgres {
        let mut want: Vec<i64> = acked.into_iter().flatten().collect();
        want.sort_unstable();
        let rows = in_client(&b.lab, move || {
            let mut p = pg::Pg::connect(addr, CLIENT_TIMEOUT)?;
            let rows = p.query("SELECT n FROM bench ORDER BY n")?;
            p.close()?;
            rows.iter().map(|r| r[0].as_deref().unwrap_or("").parse::<i64>().map_err(|e| e.to_string())).collect::<Result<Vec<i64>, _>>()
        })
        .context("read the inserted rows back");
        let have = match rows {
            Ok(r) => r,
            Err(e) => return fail(out, e),
        };
        if have != want {
            let lost = want.iter().filter(|n| have.binary_search(n).is_err()).count();
            let extra = have.iter().filter(|n| want.binary_search(n).is_err()).count();
            return fail(
                out,
                anyhow!(
                    "the table holds {} rows for {} inserts acknowledged: {lost} lost, {extra} not acknowledged",
                    have.len(),
                    want.len()
                ),
            );
        }
        out.checks.push(format!("rows: {} inserts acknowledged, all {} in the table, none lost or more", want.len(), have.len()));
    }
    Ok(out)
}

/// Runs `lpm bench clients`: prints the table (or JSON); fails on any
/// wrong answer, client error, failed migration or wrong memory.
pub fn run(a: &ClientsBench) -> Result<()> {
    if a.clients == 0 || a.migrations == 0 || a.mib == 0 {
        bail!("nothing to measure: give at least one client, one migration and 1 MiB");
    }
    let (_guard, b) = crate::bench_migrate::bench_lab("clients")?;
    let name = format!("bc-{}", a.server.name());
    let ip = b.lab.allocate_ip(&name)?;
    let res = bench_in(&b, a, &name, ip);
    b.teardown.park_if_stopping();
    for host in ["h2", "h1"] {
        if b.client(host).and_then(|mut c| c.call(&Request::Delete(name.clone()))).is_ok() {
            break;
        }
    }
    let _ = b.lab.release_ip(ip);
    let out = res?;
    let sum = summarize(&out.rows);
    if a.json {
        let rows: Vec<Value> = out.rows.iter().map(Row::to_json).collect();
        let v = json!({
            "server": a.server.name(),
            "mib": a.mib,
            "rate_mib_per_s": a.rate,
            "clients": a.clients,
            "think_ms": a.think_ms,
            "new_connection_client": !a.no_new_connection,
            "migrations": rows,
            "answers_checked": out.answers,
            "errors": 0,
            "checks": out.checks,
            "summary": {
                "downtime_ms_p50": sum.downtime.0,
                "downtime_ms_p99": sum.downtime.1,
                "longest_wait_ms_p50": sum.wait.0,
                "longest_wait_ms_p99": sum.wait.1,
                "new_connection_longest_wait_ms_p50": sum.fresh_wait.0,
                "new_connection_longest_wait_ms_p99": sum.fresh_wait.1,
                "retransmissions": sum.retrans,
                "migrations_with_retransmissions": sum.migrations_with_retrans,
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let mut tail = format!("{} answers checked, none wrong, no client error\n", out.answers);
        for c in &out.checks {
            let _ = writeln!(tail, "{c}");
        }
        print!("{}", render(a, &out.rows, &sum, &tail));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 99.0), 3.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn resp_and_hashes() {
        assert_eq!(resp(&["GET", "k"]), "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        // FNV-1a 64 of "a", the published test vector.
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_ne!(http_file(0), http_file(1));
        assert_eq!(http_file(3).len(), 1000 + 3 * 1031);
    }

    /// The echo server as a plain child on loopback, killed and its
    /// directory removed however the test ends.
    struct Echo {
        child: std::process::Child,
        dir: PathBuf,
        port: u16,
        base: u64,
    }

    impl Drop for Echo {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Echo {
        fn start(mib: u64, rate: u64) -> Echo {
            let dir = std::env::temp_dir().join(format!("lpm-echo-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let bin = compile(&dir, "echo_server", ECHO_SERVER_C).unwrap();
            let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port();
            let mut child = std::process::Command::new(bin)
                .args([port.to_string(), mib.to_string(), rate.to_string()])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let mut ready = String::new();
            BufReader::new(child.stdout.take().unwrap()).read_line(&mut ready).unwrap();
            let mut e = Echo { child, dir, port, base: 0 };
            assert!(ready.starts_with(&format!("ready port={port} size={mib} MiB")), "{ready}");
            e.base = u64::from_str_radix(ready.trim().rsplit("base=0x").next().unwrap(), 16).unwrap();
            e
        }
    }

    #[test]
    fn echo_server_answers_are_checked_and_its_memory_check_can_fail() {
        let e = Echo::start(4, 0);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, e.port));
        let mut c = Conn::open(Server::Tcp, addr, false).unwrap();
        for seq in 1..=50 {
            assert_eq!(c.exchange(7, seq), Ok(None));
        }
        // A request the client did not send (its count off by one) is
        // caught: the server counts what it got on the connection.
        if let Conn::Tcp { sent, .. } = &mut c {
            *sent += 1;
        }
        let err = c.exchange(7, 51).unwrap_err();
        assert!(err.contains("answer \"7 51 ") && err.contains(" 51 "), "{err}");
        let verify = |addr| {
            let (mut w, mut r) = dial(addr).unwrap();
            w.write_all(b"verify\n").unwrap();
            read_line(&mut r, "verify").unwrap()
        };
        let ok = verify(addr);
        assert!(ok.starts_with("verify OK 1024 pages"), "{ok}");
        // One word of page 7 changed behind its back is found, by number.
        use std::io::{Seek, SeekFrom};
        let mut mem = std::fs::OpenOptions::new().write(true).open(format!("/proc/{}/mem", e.child.id())).unwrap();
        mem.seek(SeekFrom::Start(e.base + 7 * 4096 + 100 * 8)).unwrap();
        mem.write_all(&[0xee; 8]).unwrap();
        let bad = verify(addr);
        assert!(bad.starts_with("verify BAD 1 of 1024 pages wrong, first page 7 word 100"), "{bad}");
    }

    #[test]
    fn the_shell_command_quotes_the_server() {
        let a = ClientsBench {
            server: Server::Redis,
            mib: 8,
            rate: 5,
            clients: 1,
            migrations: 1,
            no_new_connection: false,
            think_ms: 2,
            json: false,
        };
        let c = with_dirtier(Path::new("/d/dirtier"), &a, &["/usr/bin/x".into(), "--save".into(), "".into(), "it's".into()]);
        assert_eq!(c[2], r"'/d/dirtier' 8 5 & exec '/usr/bin/x' '--save' '' 'it'\''s'");
    }
}
