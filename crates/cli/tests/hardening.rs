//! What a peer without the cluster key, or another user on the host, can
//! do to lpmd and its files (issue 12, "Hardening"): a flood of idle
//! connections and of oversized frames leaves lpmd up, small, and moving
//! partitions; a peer's long error text stays out of the log; another
//! user reads no image; a corrupted pages file is a named error.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lpm_wire::{FrameType, Role};

mod common;

use common::lab::{Moved, TestLab, KV_SERVICE};
use common::*;

fn create_service(lab: &TestLab, name: &str, host: &str, mib: u32) {
    let dir = lab.dir.to_string_lossy().into_owned();
    let mib = mib.to_string();
    lab.ok(&["partition", "create", name, "--host", host, "--memory", "1G", "--volume", &dir, "--", "python3", KV_SERVICE, "7000", &mib]);
}

/// A field of /proc/PID/status in kB.
fn status_kb(pid: i32, field: &str) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("lpmd {pid} is gone: {e}"));
    st.lines()
        .find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {st}"))
}

fn log_len(lab: &TestLab, host: &str) -> u64 {
    std::fs::metadata(lab.dir.join(host).join("lpmd.log")).map(|m| m.len()).unwrap_or(0)
}

/// The frame header of a Hello announcing `len` bytes (never sent whole).
fn announced(len: u32) -> [u8; lpm_wire::HEADER_LEN] {
    let mut h = [0u8; lpm_wire::HEADER_LEN];
    h[..4].copy_from_slice(b"LPMW");
    h[4..6].copy_from_slice(&(FrameType::Hello as u16).to_le_bytes());
    h[8..12].copy_from_slice(&len.to_le_bytes());
    h[12..16].copy_from_slice(&len.to_le_bytes());
    h
}

/// Opens N connections to HOST:PORT, keeps them without a word, prints
/// its progress, and holds them until its stdin closes: the test process
/// cannot raise its own limit of open files past 20 000, four of these
/// hold the idle connections instead.
const FLOOD: &str = r#"
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for i in range(1, n + 1):
    try:
        held.append(socket.create_connection((host, port), timeout=30))
    except OSError:
        pass
    if i % 250 == 0:
        print("made", i, flush=True)
print("done", len(held), flush=True)
sys.stdin.read()
"#;

/// Child processes killed when the test ends, however it ends.
struct Kids(Vec<std::process::Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for k in &mut self.0 {
            let _ = k.kill();
            let _ = k.wait();
        }
    }
}

/// From h3, which holds no place in the migration, as an attacker on the
/// management network would: 20 000 connections left idle and 100 that
/// announce a 64 MiB frame before any handshake and send 8 MiB of it.
/// Meanwhile kv moves from h1 to h2. h2's lpmd (once: a thread per
/// connection, which it could not spawn past some thousands, and a buffer
/// of the announced size) stays the same process, its peak RSS under
/// 100 MiB, its log small, and the migration completes.
#[test]
fn a_connection_flood_leaves_lpmd_up_small_and_migrating() {
    const IDLE: usize = 20_000;
    const HOLDERS: usize = 4;
    const OVERSIZED: usize = 100;
    let lab = TestLab::up("flood", 3);
    create_service(&lab, "kv", "h1", 8);
    lab.wait_log("kv", "listening", Duration::from_secs(30));
    let l = lab.lab();
    let target: SocketAddr = l.host("h2").unwrap().listen.into();
    let h3ns = l.host("h3").unwrap().netns.clone();
    let lpmd = lab.lpmd_pid("h2").expect("h2's lpmd");
    let log_before = log_len(&lab, "h2");
    let opened = AtomicUsize::new(0);
    let big_sent = AtomicUsize::new(0);
    let t0 = Instant::now();
    let mut kids = Kids(Vec::new());
    for _ in 0..HOLDERS {
        let kid = Command::new("ip")
            .args(["netns", "exec", &h3ns, "python3", "-c", FLOOD])
            .args([target.ip().to_string(), target.port().to_string(), (IDLE / HOLDERS).to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a flood");
        kids.0.push(kid);
    }
    let outs: Vec<_> = kids.0.iter_mut().map(|k| k.stdout.take().unwrap()).collect();
    let h3 = l.netns_of("h3").unwrap().fd().unwrap();
    let (held, moved) = std::thread::scope(|s| {
        let progress: Vec<_> = outs
            .into_iter()
            .map(|out| {
                let opened = &opened;
                s.spawn(move || {
                    let mut last = 0;
                    for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
                        let line = line.unwrap();
                        if let Some(n) = line.strip_prefix("made ") {
                            let n: usize = n.parse().unwrap();
                            opened.fetch_add(n - last, Ordering::Relaxed);
                            last = n;
                        } else if let Some(n) = line.strip_prefix("done ") {
                            return n.parse::<usize>().unwrap();
                        }
                    }
                    panic!("a flood ended before it was done");
                })
            })
            .collect();
        let big: Vec<_> = (0..10)
            .map(|_| {
                let (h3, big_sent) = (h3.as_fd(), &big_sent);
                s.spawn(move || {
                    lpm_sys::net::in_netns(h3, || {
                        let chunk = vec![0x41u8; 64 << 10];
                        for _ in 0..OVERSIZED / 10 {
                            let Ok(mut c) = TcpStream::connect_timeout(&target, Duration::from_secs(30)) else { continue };
                            c.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
                            let mut sent = 0;
                            if c.write_all(&announced(lpm_wire::MAX_PAYLOAD)).is_ok() {
                                while sent < 8 << 20 && c.write_all(&chunk).is_ok() {
                                    sent += chunk.len();
                                }
                            }
                            big_sent.fetch_add(sent, Ordering::Relaxed);
                        }
                    })
                    .unwrap()
                })
            })
            .collect();
        // The migration starts once the flood is well under way.
        while opened.load(Ordering::Relaxed) < 2_000 {
            assert!(t0.elapsed() < Duration::from_secs(120), "the flood does not get going");
            std::thread::sleep(Duration::from_millis(10));
        }
        let moved = lab.migrate("kv", "h2");
        for b in big {
            b.join().unwrap();
        }
        let held: usize = progress.into_iter().map(|p| p.join().unwrap()).sum();
        (held, moved)
    });
    let elapsed = t0.elapsed();
    let hwm = status_kb(lpmd, "VmHWM:");
    let threads = status_kb_threads(lpmd);
    eprintln!(
        "flood: {} of {IDLE} connections made, {} MiB sent in oversized frames, {:.1} s; h2's lpmd peak RSS {} MiB, {threads} threads",
        held,
        big_sent.load(Ordering::Relaxed) >> 20,
        elapsed.as_secs_f64(),
        hwm >> 10
    );
    assert_eq!(opened.load(Ordering::Relaxed), IDLE);
    assert!(matches!(moved, Moved::Completed(_)), "the migration beside the flood: {moved:?}\nh2:\n{}", lab.lpmd_log_tail("h2", 40));
    assert_eq!(lab.lpmd_pid("h2"), Some(lpmd));
    assert!(Path::new(&format!("/proc/{lpmd}")).exists(), "h2's lpmd died:\n{}", lab.lpmd_log_tail("h2", 40));
    assert!(hwm < 100 << 10, "h2's lpmd peaked at {} MiB of RSS", hwm >> 10);
    assert_eq!(lab.host_of("kv"), "h2");
    drop(kids);
    // Refusals were logged, at most a line a second per kind.
    let log = lab.log_of("h2");
    let lines = log.lines().filter(|l| l.contains("connections refused") || l.contains("handshake failed")).count();
    assert!(lines >= 1, "no refusal logged:\n{}", lab.lpmd_log_tail("h2", 40));
    let limit = 2 * (elapsed.as_secs() as usize + 2) + 4;
    assert!(lines <= limit, "{lines} refusal lines in {elapsed:?} (at most {limit})");
    let grown = log_len(&lab, "h2") - log_before;
    assert!(grown < 256 << 10, "h2's log grew by {grown} bytes");
    // And it answers its own CLI.
    assert!(lab.partitions_on("h2").iter().any(|p| p.spec.name == "kv"));
}

fn status_kb_threads(pid: i32) -> u64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    st.lines().find_map(|l| l.strip_prefix("Threads:")?.trim().parse().ok()).unwrap_or(0)
}

/// Error frames of 10 MB, before the handshake on the mover port and
/// after it (mutual TLS) on the mover port and (with the key) on the
/// control socket: the
/// log takes at most a few KiB of them, the text cut and its length said.
#[test]
fn a_peers_long_error_text_stays_out_of_the_log() {
    let lab = TestLab::up("errtext", 2);
    let l = lab.lab();
    let target: SocketAddr = l.host("h2").unwrap().listen.into();
    let key = lpm_agent::client::read_key(&l.key_path()).unwrap();
    let text = vec![b'E'; 10 << 20];
    let before = log_len(&lab, "h2");
    let h1 = l.netns_of("h1").unwrap().fd().unwrap();
    lpm_sys::net::in_netns(h1.as_fd(), || {
        for _ in 0..5 {
            let mut s = TcpStream::connect_timeout(&target, Duration::from_secs(10)).expect("reach h2's mover");
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
            // h2 may close before it has it all.
            let _ = lpm_wire::write_frame(&mut s, FrameType::Error, &text, None);
            let _ = lpm_wire::read_frame(&mut s);
        }
    })
    .unwrap();
    // After the handshake: mutual TLS as h1.
    let h1_id = common::mover::host_identity(&l, "h1");
    for _ in 0..5 {
        let (mut tx, mut rx) = common::mover::dial(&l, "h1", "h2", &h1_id, "h1").expect("mutual TLS as h1");
        let _ = lpm_wire::write_frame(&mut tx, FrameType::Error, &text, None);
        let _ = tx.flush();
        let _ = lpm_wire::read_frame(&mut rx);
    }
    let control = l.host("h2").unwrap().control.clone();
    for _ in 0..5 {
        let mut s = std::os::unix::net::UnixStream::connect(&control).expect("reach h2's control socket");
        lpm_wire::handshake(&mut s, Role::Opener, &key, "test").expect("handshake with the key");
        let _ = lpm_wire::write_frame(&mut s, FrameType::Error, &text, None);
        let _ = lpm_wire::read_frame(&mut s);
    }
    // The control connections' errors are logged as each ends.
    lab.wait_for_log("h2", "bytes in all", Duration::from_secs(30));
    let t = Instant::now();
    while lab.log_of("h2").matches("bytes in all").count() < 5 {
        assert!(t.elapsed() < Duration::from_secs(30), "h2 did not log 5 control errors:\n{}", lab.lpmd_log_tail("h2", 20));
        std::thread::sleep(Duration::from_millis(20));
    }
    let grown = log_len(&lab, "h2") - before;
    eprintln!("15 error frames of 10 MB: h2's log grew by {grown} bytes");
    assert!(grown < 8 << 10, "h2's log grew by {grown} bytes:\n{}", lab.lpmd_log_tail("h2", 20));
    assert!(lab.lpmd_pid("h2").is_some_and(|p| Path::new(&format!("/proc/{p}")).exists()));
}

/// Whether uid and gid 65534 (set in the child before it runs `cat`)
/// can read `path`.
fn nobody_reads(path: &Path) -> bool {
    Command::new("cat").arg(path).uid(65534).gid(65534).output().expect("run cat as nobody").status.success()
}

/// A checkpoint's image holds the tree's memory: its directory is 0700
/// and every file 0600, and another user reads none of them (even with
/// the directory opened up).
#[test]
fn another_user_cannot_read_an_image() {
    let mut s = Scene::new("imgmode");
    let pid = s.spawn(Command::new("python3").args(["-c", "import time\nsecret = 'x' * 100000\ntime.sleep(1000)"]));
    let images = s.path("img");
    s.checkpoint(pid, &images, true);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&images), 0o700, "{}", images.display());
    std::fs::set_permissions(&images, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut files = 0;
    for e in std::fs::read_dir(&images).unwrap() {
        let p = e.unwrap().path();
        assert_eq!(mode(&p), 0o600, "{}", p.display());
        assert!(!nobody_reads(&p), "nobody read {}", p.display());
        files += 1;
    }
    assert!(files >= 2, "{files} files in the image");
    // The check can fail: a file nobody may read is read.
    let open = images.join("open");
    std::fs::write(&open, b"x").unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(nobody_reads(&open), "the test cannot run as nobody");
    s.kill_tree(pid);
}

/// `lpm restore` of an image whose pages file is cut short, or says its
/// body is huge, or has a bit flipped in its header: an error that names
/// the file, never a panic of the fill.
#[test]
fn a_corrupted_pages_file_is_a_named_error() {
    let mut s = Scene::new("pagescorrupt");
    let pid = s.spawn(Command::new("python3").args(["-c", "import time\nsecret = bytearray(b'x' * 4000000)\ntime.sleep(1000)"]));
    let images = s.path("img");
    s.checkpoint(pid, &images, false);
    let pages = images.join(format!("pages-{pid}.img"));
    let good = std::fs::read(&pages).unwrap();
    let huge = |len: u64| {
        let mut b = good.clone();
        b[16..24].copy_from_slice(&len.to_le_bytes());
        b
    };
    let mut flipped = good.clone();
    flipped[20] ^= 0x08;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("body length near 2^64", huge(u64::MAX - 4095)),
        ("body length 1 TiB", huge(1 << 40)),
        ("cut short", good[..good.len() / 2].to_vec()),
        ("a header bit flipped", flipped),
    ];
    for (what, bytes) in cases {
        std::fs::write(&pages, &bytes).unwrap();
        let out = Command::new(LPM).args(["restore", "--detach", "--images"]).arg(&images).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{what}: restored");
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert!(err.contains(&pages.display().to_string()), "{what}: the error does not name {}: {err}", pages.display());
    }
    std::fs::write(&pages, &good).unwrap();
    let again = s.restore(&images);
    assert_eq!(again, pid);
    s.kill_tree(again);
}
