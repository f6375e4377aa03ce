//! The lazy fill of a partition that arrived, in a process of its own.
//!
//! After "go" the source's copy is gone and the target's page store holds
//! the only copy of every precopied page not filled yet. A fill on a thread
//! of lpmd would end with lpmd: its userfaultfds closed, every page not
//! filled would then read as zero in the running partition. So lpmd hands
//! the fill (each task's userfaultfd and page store, and the runs left) to
//! `lpm fill`, this same binary run again, over a seqpacket socket on its
//! standard input, and a thread of lpmd only waits for it. A fill process
//! whose lpmd died goes on to the end; it is nobody's to kill but its own.
//!
//! The messages: `S` + pid (i32 LE) with the task's userfaultfd and store as
//! SCM_RIGHTS, then `R` + runs (start, end, store offset; u64 LE each), as
//! many as needed, for that task; `E` ends. Should the process not start,
//! the fill runs on a thread of lpmd as before.

use std::os::fd::{AsFd, OwnedFd};
use std::process::{Command, Stdio};
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use lpm_engine::{FillPart, LazyFill};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};

/// The first argument of the binary that makes it a fill process.
pub const FILL_ARG: &str = "fill";

/// Runs per `R` message (24 bytes each).
const RUNS_PER_MESSAGE: usize = 2048;

/// A fill under way: the thread that waits for it, and the fill
/// process's pid when it runs in one (a rollback kills it with the tree).
pub struct Filling {
    /// Ends when the fill does.
    pub handle: JoinHandle<()>,
    /// The fill process.
    pub pid: Option<i32>,
}

/// A fill process started ahead (at a migration's prepare), waiting on
/// its socket for a fill: the stop then only hands it the parts, and
/// waits for no process to start. Dropped unused, it is told nothing more
/// and ends by itself (and is reaped here).
pub struct Spare {
    /// The process and our end of its socket, until handed a fill.
    proc: Option<(std::process::Child, OwnedFd)>,
    partition: String,
}

impl Spare {
    /// Starts `lpm fill` for `partition`, idle until [`Spare::start`].
    pub fn spawn(partition: &str) -> Result<Spare> {
        let (ours, theirs) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .context("socketpair for the fill process")?;
        let exe = std::env::current_exe().context("find this program, to run it as the fill process")?;
        let child = Command::new(exe)
            .args([FILL_ARG, "--partition", partition])
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .spawn()
            .context("spawn the fill process")?;
        Ok(Spare { proc: Some((child, ours)), partition: partition.to_string() })
    }

    /// Hands the fill to the process; should that fail, the fill runs on
    /// a thread of lpmd instead.
    pub fn start(mut self, lazy: LazyFill) -> Filling {
        let name = self.partition.clone();
        let left = lazy.pages_left();
        match self.hand_over(lazy) {
            Ok(mut child) => {
                let pid = Some(child.id() as i32);
                let handle = std::thread::spawn(move || match child.wait() {
                    Ok(st) if st.success() => {}
                    Ok(st) => tracing::error!(partition = %name, status = %st, left, "the fill process failed"),
                    Err(e) => tracing::error!(partition = %name, error = %e, "wait for the fill process"),
                });
                Filling { handle, pid }
            }
            Err((e, lazy)) => {
                tracing::warn!(partition = %name, error = format!("{e:#}"), "no fill process: the fill runs in lpmd");
                Filling { handle: std::thread::spawn(move || report(&name, left, lazy.run())), pid: None }
            }
        }
    }

    fn hand_over(&mut self, lazy: LazyFill) -> Result<std::process::Child, (anyhow::Error, LazyFill)> {
        let Some((mut child, sock)) = self.proc.take() else { return Err((anyhow!("the fill process was handed a fill already"), lazy)) };
        let parts = match lazy.into_parts() {
            Ok(p) => p,
            Err((e, lazy)) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err((anyhow!(e).context("take the fill apart"), lazy));
            }
        };
        if let Err(e) = send(&sock, &parts) {
            // Ours still: the process gets nothing more and goes.
            let _ = child.kill();
            let _ = child.wait();
            return Err((e, LazyFill::from_parts(parts)));
        }
        Ok(child)
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        // Never handed a fill: it has nothing to do.
        if let Some((mut child, _sock)) = self.proc.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts the fill of `partition`'s memory, in a process of its own when
/// it can (started now: see [`Spare`] to start it ahead).
pub fn start(partition: &str, lazy: LazyFill) -> Filling {
    match Spare::spawn(partition) {
        Ok(spare) => spare.start(lazy),
        Err(e) => {
            let name = partition.to_string();
            let left = lazy.pages_left();
            tracing::warn!(partition = %name, error = format!("{e:#}"), "no fill process: the fill runs in lpmd");
            Filling { handle: std::thread::spawn(move || report(&name, left, lazy.run())), pid: None }
        }
    }
}

fn send(sock: &OwnedFd, parts: &[FillPart]) -> Result<()> {
    let send = |data: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]| lpm_sys::misc::send_fds(sock.as_fd(), data, fds).context("send the fill");
    for p in parts {
        let mut head = vec![b'S'];
        head.extend_from_slice(&p.pid.to_le_bytes());
        send(&head, &[p.uffd.as_fd(), p.store.as_fd()])?;
        for chunk in p.runs.chunks(RUNS_PER_MESSAGE) {
            let mut m = Vec::with_capacity(1 + chunk.len() * 24);
            m.push(b'R');
            for &(start, end, off) in chunk {
                for v in [start, end, off] {
                    m.extend_from_slice(&v.to_le_bytes());
                }
            }
            send(&m, &[])?;
        }
    }
    send(b"E", &[])
}

/// The fill process: receives the fill on standard input and runs it.
pub fn run_child(partition: &str) -> Result<()> {
    let stdin = std::io::stdin();
    let sock = stdin.as_fd();
    let mut parts: Vec<FillPart> = Vec::new();
    let mut buf = vec![0u8; 1 + RUNS_PER_MESSAGE * 24];
    loop {
        let (n, fds) = lpm_sys::misc::recv_fds(sock, &mut buf, 2).context("receive the fill from lpmd")?;
        match buf.get(..n.min(1)) {
            Some([b'S']) => {
                let pid = buf.get(1..5).filter(|_| n == 5).ok_or_else(|| anyhow!("malformed space message ({n} bytes)"))?;
                let pid = i32::from_le_bytes(pid.try_into().expect("4 bytes"));
                let [uffd, store]: [OwnedFd; 2] =
                    fds.try_into().map_err(|f: Vec<OwnedFd>| anyhow!("pid {pid}: {} descriptors, not 2", f.len()))?;
                parts.push(FillPart { pid, uffd, store, runs: Vec::new() });
            }
            Some([b'R']) => {
                let p = parts.last_mut().ok_or_else(|| anyhow!("runs before any space"))?;
                let body = &buf[1..n];
                if !body.len().is_multiple_of(24) {
                    bail!("malformed runs message for pid {} ({n} bytes)", p.pid);
                }
                let u = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
                p.runs.extend(body.chunks_exact(24).map(|r| (u(&r[..8]), u(&r[8..16]), u(&r[16..]))));
            }
            Some([b'E']) => break,
            Some(_) => bail!("unknown fill message {:?}", buf[0] as char),
            None => bail!("lpmd went before it sent the whole fill"),
        }
    }
    let lazy = LazyFill::from_parts(parts);
    let left = lazy.pages_left();
    let t = Instant::now();
    let res = lazy.run();
    let ok = res.is_ok();
    report(partition, left, res);
    tracing::debug!(partition, ms = t.elapsed().as_secs_f64() * 1e3, "fill process done");
    if ok {
        Ok(())
    } else {
        bail!("the fill of {partition} failed")
    }
}

fn report(partition: &str, left: u64, res: lpm_engine::Result<lpm_engine::FillStats>) {
    match res {
        Ok(st) => tracing::info!(
            partition,
            pages = st.pages,
            faulted = st.faulted,
            dropped = st.dropped,
            ms = st.elapsed.as_secs_f64() * 1e3,
            "lazy fill done"
        ),
        Err(e) => tracing::error!(partition, left, error = %e, "lazy fill failed"),
    }
}
