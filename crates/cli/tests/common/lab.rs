//! A lab of its own for one test (`lpm lab up`): hosts h1..hN, the client
//! namespace and a volume directory beside them, torn down however the
//! test ends (`lpm lab down` kills whatever runs in the lab's namespaces
//! and cgroups; the client processes the test started are killed first).

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::LPM;

/// How long one `lpm` call may take before the test gives up on it (a
/// migration is bounded by the agents' mover timeout, well below this).
pub const LPM_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// The agents' mover timeout in the test labs (`LPM_MOVER_TIMEOUT_MS`): a
/// target that never answers fails the migration after this long instead
/// of the default 30 s.
pub const MOVER_TIMEOUT_MS: u64 = 10_000;

/// How a migration ended, as the CLI tells it.
#[derive(Debug)]
pub enum Moved {
    /// `lpm migrate --json` succeeded with outcome "completed": the report.
    Completed(serde_json::Value),
    /// It failed or was aborted: lpm's error text, or the report's outcome.
    Failed(String),
}

/// A lab with its own directory tree:
/// `ROOT/lab` (the lab state, LPM_LAB) and `ROOT/vol` (a volume the test's
/// partitions get with --volume).
pub struct TestLab {
    /// Everything of this lab lives under here.
    pub root: PathBuf,
    /// The lab's state directory (LPM_LAB).
    pub dir: PathBuf,
    /// A directory for the partitions' files, passed with --volume.
    pub vol: PathBuf,
    clients: Vec<Child>,
}

impl TestLab {
    /// Brings up a lab of `hosts` hosts; `tag` names the test in the
    /// directory name (with the pid and the time, so runs do not collide).
    pub fn up(tag: &str, hosts: usize) -> TestLab {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let root = std::env::temp_dir().join(format!("lpm-lab-{tag}-{}-{nanos}", std::process::id()));
        let vol = root.join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        let lab = TestLab { dir: root.join("lab"), root, vol, clients: Vec::new() };
        let out = Command::new(LPM)
            .args(["lab", "up", "--hosts", &hosts.to_string()])
            .env("LPM_LAB", &lab.dir)
            .env("LPM_LOG", "info")
            .env("LPM_MOVER_TIMEOUT_MS", MOVER_TIMEOUT_MS.to_string())
            .stdin(Stdio::null())
            .output()
            .expect("run lpm lab up");
        assert!(out.status.success(), "lab up failed: {}", String::from_utf8_lossy(&out.stderr));
        lab
    }

    /// Runs lpm against this lab, killing it after [`LPM_CALL_TIMEOUT`].
    pub fn lpm(&self, args: &[&str]) -> Output {
        let mut child = Command::new(LPM)
            .args(args)
            .env("LPM_LAB", &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run lpm");
        // Readers on threads, so a full pipe cannot stall lpm.
        let mut out = child.stdout.take().unwrap();
        let mut err = child.stderr.take().unwrap();
        let out_t = std::thread::spawn(move || {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut out, &mut b).map(|_| b)
        });
        let err_t = std::thread::spawn(move || {
            let mut b = Vec::new();
            std::io::Read::read_to_end(&mut err, &mut b).map(|_| b)
        });
        let t = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait for lpm") {
                break s;
            }
            if t.elapsed() > LPM_CALL_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!("lpm {} did not finish within {LPM_CALL_TIMEOUT:?}", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output { status, stdout: out_t.join().unwrap().unwrap_or_default(), stderr: err_t.join().unwrap().unwrap_or_default() }
    }

    /// Runs lpm and returns its stdout, failing the test with its stderr.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.lpm(args);
        assert!(out.status.success(), "lpm {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `lpm partition create NAME --host HOST [--memory M] --volume VOL -- ARGV`.
    pub fn create(&self, name: &str, host: &str, memory: Option<&str>, argv: &[String]) -> Result<(), String> {
        let vol = self.vol.to_string_lossy().into_owned();
        let mut args = vec!["partition", "create", name, "--host", host, "--volume", &vol];
        if let Some(m) = memory {
            args.extend(["--memory", m]);
        }
        args.push("--");
        args.extend(argv.iter().map(String::as_str));
        let out = self.lpm(&args);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("lpm partition create {name}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    /// Creates a partition straight through host `host`'s agent, past the
    /// CLI's checks: how a clash the CLI refuses (a name or address another
    /// host has) is set up, as older versions or another client made them.
    pub fn create_past_the_cli(&self, host: &str, spec: lpm_host::partition::PartitionSpec) {
        let h = self.lab_json()["hosts"].as_array().unwrap().iter().find(|h| h["name"] == host).cloned().unwrap();
        let key = lpm_agent::client::read_key(&self.dir.join("key")).unwrap();
        let control = PathBuf::from(h["control"].as_str().unwrap());
        let mut cl = lpm_agent::client::Client::connect(host, &control, &key).unwrap();
        match cl.call(&lpm_agent::api::Request::Create(spec)) {
            Ok(lpm_agent::api::Response::Partition(_)) => {}
            other => panic!("create on {host}'s agent: {other:?}"),
        }
    }

    /// `lpm partition show NAME` as JSON.
    pub fn show(&self, name: &str) -> serde_json::Value {
        let out = self.ok(&["partition", "show", name]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("partition show {name} is not JSON ({e}): {out}"))
    }

    /// The host the partition is on.
    pub fn host_of(&self, name: &str) -> String {
        self.show(name)["host"].as_str().unwrap_or_default().to_string()
    }

    /// The partition's state ("running", "stopped", ...).
    pub fn state_of(&self, name: &str) -> String {
        self.show(name)["state"].as_str().unwrap_or_default().to_string()
    }

    /// The host pid of the partition's init.
    pub fn pid_of(&self, name: &str) -> i32 {
        let show = self.show(name);
        show["pid"].as_i64().unwrap_or_else(|| panic!("partition {name} has no pid: {show}")) as i32
    }

    /// The partition's address, without the prefix length.
    pub fn ip_of(&self, name: &str) -> String {
        let show = self.show(name);
        show["spec"]["ip"]
            .as_str()
            .unwrap_or_else(|| panic!("partition {name} has no address: {show}"))
            .split('/')
            .next()
            .unwrap()
            .to_string()
    }

    /// The partition's console output.
    pub fn logs(&self, name: &str) -> String {
        let out = self.lpm(&["partition", "logs", name]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the console shows `what`.
    pub fn wait_log(&self, name: &str, what: &str, timeout: Duration) {
        let t = Instant::now();
        while !self.logs(name).contains(what) {
            assert!(t.elapsed() < timeout, "partition {name} never logged {what:?}: {}", self.logs(name));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `lpm migrate NAME --to TO --json`.
    pub fn migrate(&self, name: &str, to: &str) -> Moved {
        let out = self.lpm(&["migrate", name, "--to", to, "--json"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Moved::Failed(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        match serde_json::from_str::<serde_json::Value>(&stdout) {
            Ok(r) if r["outcome"]["result"] == "completed" => Moved::Completed(r),
            Ok(r) => Moved::Failed(format!("outcome {}", r["outcome"])),
            Err(e) => Moved::Failed(format!("the report is not JSON ({e}): {stdout}")),
        }
    }

    /// The lab's state file.
    pub fn lab_json(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("lab.json")).unwrap()).unwrap()
    }

    /// The client namespace (on the partition network, .250).
    pub fn client_ns(&self) -> String {
        self.lab_json()["client"]["netns"].as_str().unwrap().to_string()
    }

    /// The pid of a host's agent.
    pub fn lpmd_pid(&self, host: &str) -> Option<i32> {
        let lab = self.lab_json();
        let h = lab["hosts"].as_array()?.iter().find(|h| h["name"] == host)?.clone();
        h["pid"].as_i64().map(|p| p as i32)
    }

    /// The last `lines` lines of a host's agent log, colours stripped.
    pub fn lpmd_log_tail(&self, host: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join(host).join("lpmd.log")).unwrap_or_default();
        let mut plain = String::new();
        let mut esc = false;
        for c in text.chars() {
            match (esc, c) {
                (false, '\u{1b}') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => plain.push(c),
            }
        }
        let all: Vec<&str> = plain.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// A command run in the client namespace (`ip netns exec`).
    pub fn client_cmd(&self, argv: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.client_ns()]).args(argv);
        c
    }

    /// Starts a long-running client (stdout and stderr piped); it is
    /// killed when the lab goes down. Returns its index.
    pub fn start_client(&mut self, mut cmd: Command) -> usize {
        let c = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start a client");
        self.clients.push(c);
        self.clients.len() - 1
    }

    /// Sends SIGINT to client `i` and returns its output (stdout, then
    /// stderr) and whether it exited with success.
    pub fn finish_client(&mut self, i: usize) -> (bool, String) {
        let c = &mut self.clients[i];
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGINT);
        let done = std::mem::replace(c, Command::new("true").spawn().unwrap());
        let out = done.wait_with_output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// A TCP connection made from the client namespace: the connecting
    /// thread joins that namespace, the socket stays in it and may be used
    /// from any thread.
    pub fn connect_from_client(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let ns = PathBuf::from("/run/netns").join(self.client_ns());
        std::thread::spawn(move || {
            let f = File::open(&ns)?;
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        })
        .join()
        .expect("the connecting thread panicked")
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        for c in &mut self.clients {
            let _ = c.kill();
            let _ = c.wait();
        }
        let out = Command::new(LPM).args(["lab", "down"]).env("LPM_LAB", &self.dir).stdin(Stdio::null()).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!("lab down: {}", String::from_utf8_lossy(&o.stderr)),
            Err(e) => eprintln!("lab down: {e}"),
        }
        if std::env::var_os("LPM_LAB_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        } else {
            eprintln!("kept {}", self.root.display());
        }
    }
}
