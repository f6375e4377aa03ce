//! Huge pages reserved for tests: the machine has none (vm.nr_hugepages
//! is 0), so a test that needs some raises the sysctl by its count while
//! it runs and gives them back when its guard drops, also on a panic.
//!
//! Tests of one binary run in parallel threads, several binaries one
//! after another (or at once), so every holder goes through one
//! machine-wide lock (flock on [`LOCK`]) and a ledger ([`LEDGER`]): the
//! sysctl's value before the first holder, then one line per holder (pid,
//! id, count). The sysctl is always that base plus what the live holders
//! hold; the last one out puts the base back and removes the ledger. A
//! holder killed before it could give its pages back (its pid gone) is
//! swept by the next one to come or go.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};

/// The sysctl.
const NR: &str = "/proc/sys/vm/nr_hugepages";
/// Taken (flock, exclusive) while the ledger and the sysctl change.
const LOCK: &str = "/run/lpm-test-hugepages.lock";
/// Base value and holders.
const LEDGER: &str = "/run/lpm-test-hugepages.ledger";

/// Huge pages of the default size (2 MiB) held for a test; given back
/// when dropped.
pub struct HugePages {
    id: u64,
    /// How many.
    pub count: u64,
}

/// The ledger: the sysctl's value before the first holder, and holders
/// (pid, id, count).
struct Ledger {
    base: u64,
    holders: Vec<(u32, u64, u64)>,
}

fn read_nr() -> Result<u64, String> {
    fs::read_to_string(NR).map_err(|e| format!("read {NR}: {e}"))?.trim().parse().map_err(|e| format!("parse {NR}: {e}"))
}

fn write_nr(n: u64) -> Result<(), String> {
    fs::write(NR, n.to_string()).map_err(|e| format!("write {n} to {NR}: {e}"))
}

impl Ledger {
    fn read() -> Result<Ledger, String> {
        let text = match fs::read_to_string(LEDGER) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ledger { base: read_nr()?, holders: Vec::new() }),
            Err(e) => return Err(format!("read {LEDGER}: {e}")),
        };
        let mut lines = text.lines();
        let base = lines.next().and_then(|l| l.strip_prefix("base ")?.trim().parse().ok()).ok_or(format!("{LEDGER}: no base line"))?;
        let holders = lines
            .filter_map(|l| {
                let v: Vec<u64> = l.split_whitespace().filter_map(|w| w.parse().ok()).collect();
                (v.len() == 3).then(|| (v[0] as u32, v[1], v[2]))
            })
            // A holder killed before it gave its pages back.
            .filter(|&(pid, _, _)| std::path::Path::new(&format!("/proc/{pid}")).exists())
            .collect();
        Ok(Ledger { base, holders })
    }

    fn held(&self) -> u64 {
        self.holders.iter().map(|h| h.2).sum()
    }

    /// Writes the sysctl and the ledger (removed once nobody holds any).
    fn apply(&self) -> Result<(), String> {
        write_nr(self.base + self.held())?;
        if self.holders.is_empty() {
            return match fs::remove_file(LEDGER) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(format!("remove {LEDGER}: {e}")),
                _ => Ok(()),
            };
        }
        let mut text = format!("base {}\n", self.base);
        for (pid, id, n) in &self.holders {
            text.push_str(&format!("{pid} {id} {n}\n"));
        }
        let tmp = format!("{LEDGER}.{}", std::process::id());
        fs::File::create(&tmp).and_then(|mut f| f.write_all(text.as_bytes())).map_err(|e| format!("write {tmp}: {e}"))?;
        fs::rename(&tmp, LEDGER).map_err(|e| format!("rename {tmp} to {LEDGER}: {e}"))
    }
}

/// Runs `f` holding the machine-wide lock (a descriptor of its own, so
/// that threads of one process exclude each other too).
fn locked<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let file = fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK).map_err(|e| format!("open {LOCK}: {e}"))?;
    // SAFETY: flock on a descriptor we own; released when it closes.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!("flock {LOCK}: {}", std::io::Error::last_os_error()));
    }
    f()
}

/// The free and reserved counts of the default pool.
fn pool() -> (u64, u64) {
    let field = |name: &str| -> u64 {
        fs::read_to_string("/proc/meminfo").unwrap_or_default().lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
    };
    (field("HugePages_Free:"), field("HugePages_Rsvd:"))
}

impl HugePages {
    /// Raises the pool by `n` huge pages for the caller, or says why it
    /// could not (memory too fragmented, no permission).
    pub fn reserve(n: u64) -> Result<HugePages, String> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        locked(|| {
            let mut l = Ledger::read()?;
            l.holders.push((std::process::id(), id, n));
            let want = l.base + l.held();
            l.apply()?;
            // The kernel makes what whole free 2 MiB blocks it finds; a
            // page cache spread over memory leaves few, and compaction
            // makes more. Asked again after each compaction, at most
            // three times.
            let mut got = read_nr()?;
            for _ in 0..3 {
                if got >= want {
                    break;
                }
                let _ = fs::write("/proc/sys/vm/compact_memory", "1");
                l.apply()?;
                got = read_nr()?;
            }
            if got < want {
                l.holders.retain(|h| h.1 != id || h.0 != std::process::id());
                let _ = l.apply();
                return Err(format!("asked for {want} huge pages in {NR}, the kernel made {got} (memory too fragmented?)"));
            }
            Ok(HugePages { id, count: n })
        })
        .map_err(|e| {
            let (free, resv) = pool();
            format!("cannot reserve {n} huge pages of 2 MiB: {e} (HugePages_Free {free}, HugePages_Rsvd {resv})")
        })
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        let id = self.id;
        let r = locked(|| {
            let mut l = Ledger::read()?;
            l.holders.retain(|h| !(h.0 == std::process::id() && h.1 == id));
            l.apply()
        });
        if let Err(e) = r {
            eprintln!("giving back {} huge pages: {e}", self.count);
        }
    }
}

/// The pool of huge pages to one test alone: it waits until no other
/// holder of the ledger is left, then keeps the lock for as long as it
/// lives, so that nobody else raises or lowers the pool meanwhile (they
/// wait on the lock). For a test that needs to know how many huge pages
/// are free (a pool too small on purpose).
pub struct Exclusive {
    lock: fs::File,
    id: u64,
    /// How many it holds.
    pub count: u64,
    /// Free pages of the pool's base (set by something else than these
    /// tests) taken out of the pool while it holds it, so that what is
    /// free is what the test made free; the base comes back at the drop.
    hidden: u64,
}

/// Free huge pages of 2 MiB that no mapping has reserved.
fn free_unreserved() -> Result<u64, String> {
    let dir = "/sys/kernel/mm/hugepages/hugepages-2048kB";
    let read = |f: &str| -> Result<u64, String> {
        let path = format!("{dir}/{f}");
        fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?.trim().parse().map_err(|e| format!("parse {path}: {e}"))
    };
    Ok(read("free_hugepages")?.saturating_sub(read("resv_hugepages")?))
}

impl Exclusive {
    /// Waits (at most `wait`) until this test is the only holder, then
    /// holds `n` huge pages.
    pub fn take(n: u64, wait: std::time::Duration) -> Result<Exclusive, String> {
        let id = u64::MAX - std::process::id() as u64;
        let t = std::time::Instant::now();
        loop {
            let lock =
                fs::OpenOptions::new().create(true).truncate(false).write(true).open(LOCK).map_err(|e| format!("open {LOCK}: {e}"))?;
            // SAFETY: flock on a descriptor we own; released when it closes.
            if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(format!("flock {LOCK}: {}", std::io::Error::last_os_error()));
            }
            let l = Ledger::read()?;
            if l.holders.is_empty() {
                let hidden = free_unreserved()?.min(l.base);
                let mut x = Exclusive { lock, id, count: 0, hidden };
                x.grow(n)?;
                return Ok(x);
            }
            drop(lock);
            if t.elapsed() > wait {
                return Err(format!("other tests held huge pages for {:?}: {:?}", wait, l.holders));
            }
            // Others hold pages until their runs end; nothing to wait on
            // but the ledger itself.
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    /// Raises what it holds by `n`.
    pub fn grow(&mut self, n: u64) -> Result<(), String> {
        let _ = &self.lock;
        let mut l = Ledger::read()?;
        l.holders.retain(|h| !(h.0 == std::process::id() && h.1 == self.id));
        l.holders.push((std::process::id(), self.id, self.count + n));
        let want = l.base + l.held() - self.hidden;
        l.apply()?;
        write_nr(want)?;
        let mut got = read_nr()?;
        for _ in 0..3 {
            if got >= want {
                break;
            }
            let _ = fs::write("/proc/sys/vm/compact_memory", "1");
            write_nr(want)?;
            got = read_nr()?;
        }
        self.count += n;
        if got < want {
            return Err(format!("asked for {want} huge pages in {NR}, the kernel made {got} (memory too fragmented?)"));
        }
        Ok(())
    }
}

impl Drop for Exclusive {
    fn drop(&mut self) {
        let r = Ledger::read().and_then(|mut l| {
            l.holders.retain(|h| !(h.0 == std::process::id() && h.1 == self.id));
            l.apply()
        });
        if let Err(e) = r {
            eprintln!("giving back {} huge pages: {e}", self.count);
        }
    }
}
