//! What the mover's TLS halves cost against plain TCP on loopback: 1 GiB
//! each way in the mover's 1 MiB writes, one thread writing and one
//! reading. `cargo bench -p lpm-trust` (a release build) prints both
//! rates and the CPU both ends spent per GiB.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use lpm_trust::mover::{accept, connect, mover_client_config, mover_server_config};
use lpm_trust::{Identity, Pki, Role};

const TOTAL: usize = 1 << 30;

fn pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind on loopback");
    let c = TcpStream::connect(l.local_addr().expect("its address")).expect("connect on loopback");
    let (s, _) = l.accept().expect("accept on loopback");
    (c, s)
}

/// Process CPU time (user and system), in ms.
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
    let rest = &stat[stat.rfind(')').expect("a stat line") + 2..];
    let f: Vec<u64> = rest.split_whitespace().skip(11).take(2).map(|x| x.parse().expect("a tick count")).collect();
    (f[0] + f[1]) as f64 * 10.0
}

/// MiB/s and CPU ms per GiB of sending TOTAL bytes from `w` to `r`.
fn run(mut w: Box<dyn Write + Send>, mut r: Box<dyn Read + Send>) -> (f64, f64) {
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let cpu0 = cpu_ms();
    let t = std::time::Instant::now();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0;
        while n < TOTAL {
            let k = r.read(&mut buf).expect("read");
            assert!(k > 0, "the stream ended after {n} bytes");
            n += k;
        }
    });
    for _ in 0..TOTAL / chunk.len() {
        w.write_all(&chunk).expect("write");
    }
    w.flush().expect("flush");
    reader.join().expect("the reader");
    let s = t.elapsed().as_secs_f64();
    (TOTAL as f64 / s / (1 << 20) as f64, (cpu_ms() - cpu0) / (TOTAL >> 30) as f64)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("lpm-trust-bench-{}", std::process::id()));
    let pki = Pki::init(&dir).expect("a site CA");
    let id = |name: &str| Identity::load(&pki.ca_cert(), &pki.enroll(Role::Host, name).expect("enroll")).expect("load");
    let (h1, h2) = (id("h1"), id("h2"));

    let (c, s) = pair();
    let plain = run(Box::new(c), Box::new(s));

    let (mut c, mut s) = pair();
    let (sc, cc) = (mover_server_config(&h2).expect("server config"), mover_client_config(&h1).expect("client config"));
    let srv = std::thread::spawn(move || {
        let r = accept(&mut s, sc).expect("accept");
        (s, r)
    });
    let cr = connect(&mut c, cc, "h2").expect("connect");
    let (s, sr) = srv.join().expect("the server's handshake");
    let suite = cr.suite();
    let (ctx, _crx) = cr.split(&c).expect("split the client");
    let (_stx, srx) = sr.split(&s).expect("split the server");
    let tls = run(Box::new(ctx), Box::new(srx));
    let _ = std::fs::remove_dir_all(&dir);

    println!("plain TCP:        {:6.0} MiB/s, {:4.0} CPU ms per GiB (both ends)", plain.0, plain.1);
    println!("TLS halves ({suite}): {:6.0} MiB/s, {:4.0} CPU ms per GiB (both ends)", tls.0, tls.1);
    println!("TLS / plain: {:.2}x the time, {:.2}x the CPU", plain.0 / tls.0, tls.1 / plain.1);
}
