//! `lpm bench`: checkpoint and restore throughput of real processes with
//! images on tmpfs, printed with the targets they are held to.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A Python process holding `mib` MiB of touched, non-zero memory.
const MEMORY: &str = r#"
import sys, time
b = bytearray(b'\x5a') * (int(sys.argv[1]) << 20)
open(sys.argv[2], "w").write("ready")
while True: time.sleep(1)
"#;

/// A Python process with `n` threads parked on an event.
const THREADS: &str = r#"
import sys, threading, time
threading.stack_size(64 << 10)
ev = threading.Event()
for _ in range(int(sys.argv[1])): threading.Thread(target=ev.wait, daemon=True).start()
open(sys.argv[2], "w").write("ready")
while True: time.sleep(1)
"#;

struct Run {
    checkpoint: Duration,
    images: Duration,
    restore: Duration,
    /// Of the restore, the read-back check (`--verify`).
    verify: Duration,
    bytes: u64,
}

fn scratch_dir() -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    std::env::temp_dir().join(format!("lpm-bench-{}-{nanos}", std::process::id()))
}

fn one(script: &str, arg: &str, dir: &Path) -> Result<Run> {
    let ready = dir.join("ready");
    let _ = std::fs::remove_file(&ready);
    let images = dir.join("images");
    let _ = std::fs::remove_dir_all(&images);
    let mut child = std::process::Command::new("python3")
        .args(["-c", script, arg])
        .arg(&ready)
        .stdin(std::process::Stdio::null())
        .spawn()
        .context("start python3")?;
    let pid = child.id() as i32;
    let t = Instant::now();
    while !ready.exists() {
        if t.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("benchmark program did not get ready");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let res = (|| -> Result<Run> {
        let t = Instant::now();
        let s = lpm_engine::checkpoint(pid, &images, &lpm_engine::CheckpointOptions::default())?;
        let checkpoint = t.elapsed();
        let _ = child.wait();
        let r = lpm_engine::restore(&images, &lpm_engine::RestoreOptions { verify: true, ..Default::default() })?;
        lpm_sys::misc::kill(r.root_pid, libc::SIGKILL);
        let _ = lpm_sys::misc::wait_exit(r.root_pid);
        Ok(Run { checkpoint, images: s.images, restore: r.elapsed, verify: r.verified.unwrap_or_default(), bytes: s.pages * 4096 })
    })();
    let _ = child.kill();
    let _ = child.wait();
    res
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Every run's throughput in GiB/s, in the order they ran, and the range:
/// on a virtual machine single runs spread widely (docs/performance.md).
fn spread(bytes: u64, v: &[Duration]) -> String {
    let gib: Vec<f64> = v.iter().map(|d| bytes as f64 / (1u64 << 30) as f64 / d.as_secs_f64()).collect();
    let (lo, hi) = gib.iter().fold((f64::MAX, 0f64), |(lo, hi), &g| (lo.min(g), hi.max(g)));
    let all: Vec<String> = gib.iter().map(|g| format!("{g:.2}")).collect();
    format!("{lo:.2} to {hi:.2} GiB/s; runs: {}", all.join(" "))
}

/// Runs the benchmarks `runs` times each and prints medians.
pub fn run(runs: usize, mib: u64, threads: u32) -> Result<()> {
    lpm_sys::misc::set_child_subreaper()?;
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir)?;
    // Removed however the benchmark ends, a panic included (printing to a
    // closed pipe panics).
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = lpm_sys::misc::unmount(&self.0);
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    // Images go to a tmpfs with huge pages, mounted in a mount namespace of
    // our own so it disappears with us.
    lpm_sys::misc::private_tmpfs(&dir, true).context("mount the benchmark's tmpfs")?;
    let res = (|| -> Result<()> {
        let gib = |b: u64, d: Duration| b as f64 / (1u64 << 30) as f64 / d.as_secs_f64();
        let mut c = Vec::new();
        let mut whole = Vec::new();
        let mut r = Vec::new();
        let mut v = Vec::new();
        let mut bytes = 0;
        for _ in 0..runs {
            let x = one(MEMORY, &mib.to_string(), &dir)?;
            c.push(x.images);
            whole.push(x.checkpoint);
            r.push(x.restore);
            v.push(x.verify);
            bytes = x.bytes;
        }
        let check = |r: &[Duration], v: &[Duration]| {
            let (rm, vm) = (median(r.to_vec()), median(v.to_vec()));
            let share = vm.as_secs_f64() / rm.as_secs_f64().max(1e-9) * 100.0;
            format!(
                "  of which the read-back check (--verify) {:.2} ms, {share:.1} % (target <= 5 %: {})",
                vm.as_secs_f64() * 1e3,
                if share <= 5.0 { "met" } else { "NOT met" }
            )
        };
        let memory_check = check(&r, &v);
        let (c_all, r_all) = (spread(bytes, &c), spread(bytes, &r));
        let (c, whole, r) = (median(c), median(whole), median(r));
        println!("memory: {mib} MiB process, {} MiB of pages saved, images on tmpfs (huge pages), median of {runs}", bytes >> 20);
        println!(
            "  checkpoint {:8.1} ms  {:5.2} GiB/s   (images complete; target >= 2 GiB/s: {})",
            c.as_secs_f64() * 1e3,
            gib(bytes, c),
            if gib(bytes, c) >= 2.0 { "met" } else { "NOT met" }
        );
        println!("             {c_all}");
        println!("  checkpoint until the killed tree is gone (memory freed): {:.1} ms", whole.as_secs_f64() * 1e3);
        println!(
            "  restore    {:8.1} ms  {:5.2} GiB/s   (target >= 2 GiB/s: {})",
            r.as_secs_f64() * 1e3,
            gib(bytes, r),
            if gib(bytes, r) >= 2.0 { "met" } else { "NOT met" }
        );
        println!("             {r_all}");
        println!("{memory_check}");
        let mut c = Vec::new();
        let mut r = Vec::new();
        let mut v = Vec::new();
        for _ in 0..runs {
            let x = one(THREADS, &threads.to_string(), &dir)?;
            c.push(x.checkpoint);
            r.push(x.restore);
            v.push(x.verify);
        }
        let threads_check = check(&r, &v);
        let (c, r) = (median(c), median(r));
        println!("threads: a process with {threads} threads, median of {runs}");
        println!("  checkpoint {:8.1} ms", c.as_secs_f64() * 1e3);
        println!(
            "  restore    {:8.1} ms   (target < 1000 ms: {})",
            r.as_secs_f64() * 1e3,
            if r < Duration::from_secs(1) { "met" } else { "NOT met" }
        );
        println!("{threads_check}");
        Ok(())
    })();
    res
}
