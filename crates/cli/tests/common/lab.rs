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

/// The demo's checking client.
pub const KV_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/kv_client.py");
/// The demo's service.
pub const KV_SERVICE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/demo/kv_service.py");

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

/// Takes down the labs of test processes that died without taking theirs
/// down (killed by SIGKILL, or by a runner's timeout: no Drop ran), found
/// by the pid in their directory's name (`lpm-lab-TAG-PID-NANOS`): their
/// namespaces, cgroups and agents, then the directory. A pid alive again
/// (reused) keeps its lab until it is free.
fn sweep_dead_labs() {
    let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) else { return };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("lpm-lab-") else { continue };
        let mut parts = rest.rsplitn(3, '-');
        let (Some(_nanos), Some(pid), Some(_tag)) = (parts.next(), parts.next(), parts.next()) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid == std::process::id() || std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let lab = e.path().join("lab");
        if lab.exists() {
            let down = Command::new(LPM).args(["lab", "down"]).env("LPM_LAB", &lab).stdin(Stdio::null()).output();
            if !down.is_ok_and(|o| o.status.success()) {
                // Whatever resists stays for the next sweep to try.
                continue;
            }
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

impl TestLab {
    /// Brings up a lab of `hosts` hosts; `tag` names the test in the
    /// directory name (with the pid and the time, so runs do not collide).
    pub fn up(tag: &str, hosts: usize) -> TestLab {
        TestLab::up_with(tag, hosts, &[])
    }

    /// [`TestLab::up`] with `env` in the environment of `lpm lab up`, so of
    /// every lpmd it starts (not of the test's own lpm calls, nor of an
    /// lpmd the test restarts): `LPM_FAULT`, a shorter
    /// `LPM_MOVER_TIMEOUT_MS`, limits.
    pub fn up_with(tag: &str, hosts: usize, env: &[(&str, &str)]) -> TestLab {
        TestLab::up_as(tag, hosts, env, &[])
    }

    /// [`TestLab::up_with`] and `lpm lab up --console`: a console beside
    /// the hosts, which the lab's CLI goes through.
    pub fn up_console_with(tag: &str, hosts: usize, env: &[(&str, &str)]) -> TestLab {
        TestLab::up_as(tag, hosts, env, &["--console"])
    }

    /// [`TestLab::up`] with `lpm lab up --insecure`: movers without TLS.
    pub fn up_insecure(tag: &str, hosts: usize) -> TestLab {
        TestLab::up_as(tag, hosts, &[], &["--insecure"])
    }

    /// [`TestLab::up`] with `lpm lab up --console`: a console beside the
    /// hosts, which the lab's CLI goes through.
    pub fn up_console(tag: &str, hosts: usize) -> TestLab {
        TestLab::up_as(tag, hosts, &[], &["--console"])
    }

    /// [`TestLab::up_insecure`] with `env` in every lpmd's environment.
    pub fn up_insecure_with(tag: &str, hosts: usize, env: &[(&str, &str)]) -> TestLab {
        TestLab::up_as(tag, hosts, env, &["--insecure"])
    }

    fn up_as(tag: &str, hosts: usize, env: &[(&str, &str)], extra: &[&str]) -> TestLab {
        sweep_dead_labs();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let root = std::env::temp_dir().join(format!("lpm-lab-{tag}-{}-{nanos}", std::process::id()));
        let vol = root.join("vol");
        std::fs::create_dir_all(&vol).unwrap();
        let lab = TestLab { dir: root.join("lab"), root, vol, clients: Vec::new() };
        let out = Command::new(LPM)
            .args(["lab", "up", "--hosts", &hosts.to_string()])
            .args(extra)
            .env("LPM_LAB", &lab.dir)
            .env("LPM_LOG", "info")
            .env("LPM_MOVER_TIMEOUT_MS", MOVER_TIMEOUT_MS.to_string())
            .envs(env.iter().copied())
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
                // What the hosts were doing is the only clue to a hang.
                let logs: Vec<String> = ["h1", "h2", "h3"]
                    .iter()
                    .filter(|h| self.dir.join(h).exists())
                    .map(|h| format!("--- {h}'s lpmd.log, last 40 lines:\n{}", self.lpmd_log_tail(h, 40)))
                    .collect();
                panic!("lpm {} did not finish within {LPM_CALL_TIMEOUT:?}\n{}", args.join(" "), logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Output { status, stdout: out_t.join().unwrap().unwrap_or_default(), stderr: err_t.join().unwrap().unwrap_or_default() }
    }

    /// An lpm command against this lab, to spawn (it runs on its own).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(LPM);
        c.args(args).env("LPM_LAB", &self.dir).stdin(Stdio::null());
        c
    }

    /// The lab as lpm-host loads it.
    pub fn lab(&self) -> lpm_host::lab::Lab {
        lpm_host::lab::Lab::load(&self.dir).expect("load the lab")
    }

    /// Runs lpm, which must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.lpm(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "lpm {} succeeded: {}{err}", args.join(" "), String::from_utf8_lossy(&out.stdout));
        err
    }

    /// Asks one host's lpmd directly (the CLI asks every host, which fails
    /// while one is down).
    pub fn call(&self, host: &str, req: &lpm_agent::api::Request) -> anyhow::Result<lpm_agent::api::Response> {
        let lab = self.lab();
        let key = lpm_agent::client::read_key(&lab.key_path())?;
        lpm_agent::client::Client::connect(host, &lab.host(host).expect("host").control, &key)?.call(req)
    }

    /// The partitions `host`'s lpmd lists.
    pub fn partitions_on(&self, host: &str) -> Vec<lpm_agent::api::PartitionInfo> {
        match self.call(host, &lpm_agent::api::Request::List).unwrap_or_else(|e| panic!("list partitions of {host}: {e:#}")) {
            lpm_agent::api::Response::Partitions(p) => p,
            other => panic!("{host} answered {other:?}"),
        }
    }

    /// Makes the lab's hosts file present the operator of another site (a
    /// CA of its own) to the hosts; returns the file's text, to put back.
    pub fn foreign_operator(&self) -> String {
        let path = self.lab().hosts_file();
        let before = std::fs::read_to_string(&path).expect("the lab's hosts file");
        let pki = lpm_trust::Pki::init(&self.root.join("foreign-pki")).expect("a foreign CA");
        let op = pki.enroll(lpm_trust::Role::Operator, lpm_host::lab::LAB_OPERATOR).unwrap();
        let mut f = lpm_host::hosts::HostsFile::load(&path).unwrap();
        f.operator = Some(lpm_host::hosts::Operator { ca: pki.ca_cert(), cert: op.cert, key: op.key });
        f.save(&path).unwrap();
        before
    }

    /// A host's agent log, colours stripped.
    pub fn log_of(&self, host: &str) -> String {
        self.lpmd_log_tail(host, usize::MAX)
    }

    /// Waits until `host`'s lpmd logged `what` (the log only grows).
    pub fn wait_for_log(&self, host: &str, what: &str, timeout: Duration) {
        let t = Instant::now();
        while !self.log_of(host).contains(what) {
            assert!(t.elapsed() < timeout, "{host}'s lpmd never logged {what:?}:\n{}", self.log_of(host));
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whatever of any partition is on `host`: network namespaces, cgroups,
    /// processes in its cgroups, host-side veths, scratch directories. The
    /// lab's own pieces (the host's namespace, its bridge and links) are
    /// not counted.
    pub fn leftovers(&self, host: &str) -> Vec<String> {
        let lab = self.lab();
        let prefix = lab.prefix();
        let start = format!("{prefix}-{host}-");
        let mut out = Vec::new();
        for n in lpm_host::net::Netns::list().unwrap().into_iter().filter(|n| n.starts_with(&start)) {
            out.push(format!("network namespace {n}"));
        }
        let roots = match lpm_host::cgroup::Layout::current().unwrap() {
            lpm_host::cgroup::Layout::Hybrid { v2, memory, cpu } => vec![v2.clone(), memory.clone(), cpu.clone()],
            lpm_host::cgroup::Layout::Unified { root } => vec![root.clone()],
        };
        for r in roots {
            let d = r.join(&prefix).join(host);
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().unwrap().is_dir() {
                    out.push(format!("cgroup {}", e.path().display()));
                }
            }
        }
        let mark = format!("/{prefix}/{host}/");
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
            // A zombie runs nothing and is no longer in its cgroup; it shows
            // where it was until its parent reaps it (for a process left by
            // a killed lpmd, that is pid 1, which reaps only now and then).
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X')) {
                continue;
            }
            let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            if cg.contains(&mark) {
                let cmd = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default().replace('\0', " ");
                out.push(format!("process {pid} ({}) in {mark}", cmd.trim()));
            }
        }
        let links = Command::new("ip").args(["-n", &lab.host(host).unwrap().netns, "-o", "link", "show"]).output().unwrap();
        for l in String::from_utf8_lossy(&links.stdout).lines() {
            let name = l.split(": ").nth(1).unwrap_or("").split('@').next().unwrap_or("");
            if name.len() == 10 && name.starts_with("lp") {
                out.push(format!("veth {name} in {host}"));
            }
            // A migration's hold port (lpm_host::hold).
            if name.len() == 10 && (name.starts_with("lh") || name.starts_with("lg")) {
                out.push(format!("hold port {name} in {host}"));
            }
        }
        for e in std::fs::read_dir("/dev/shm").unwrap().flatten() {
            if e.file_name().to_string_lossy().starts_with(&start) {
                out.push(format!("scratch {}", e.path().display()));
            }
        }
        out
    }

    /// Waits up to `timeout` for `host` to hold nothing of any partition.
    pub fn wait_clean(&self, host: &str, timeout: Duration) {
        let t = Instant::now();
        loop {
            let left = self.leftovers(host);
            if left.is_empty() {
                return;
            }
            assert!(t.elapsed() < timeout, "left on {host} after {timeout:?}: {left:#?}\nlpmd log:\n{}", self.log_of(host));
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the demo's checking client against `ip:7000` in the client
    /// namespace; it exits at the first wrong answer or broken
    /// connection.
    pub fn kv_client(&mut self, ip: &str) -> usize {
        let c = self.client_cmd(&["python3", KV_CLIENT, ip, "7000", "600"]);
        self.start_client(c)
    }

    /// Client `i` is still running: it has seen nothing wrong so far.
    pub fn client_alive(&mut self, i: usize) {
        if let Some(st) = self.clients[i].try_wait().unwrap() {
            let mut out = String::new();
            if let Some(o) = self.clients[i].stdout.as_mut() {
                let _ = std::io::Read::read_to_string(o, &mut out);
            }
            panic!("the client ended ({st}): {out}");
        }
    }

    /// Stops the kv client `i`; returns its request count after checking
    /// that it saw no error.
    pub fn finish_kv_client(&mut self, i: usize) -> u64 {
        let (ok, text) = self.finish_client(i);
        assert!(ok && text.contains("errors 0"), "the client saw an error: {text}");
        eprintln!("client: {}", text.lines().next().unwrap_or("").trim());
        text.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("client summary: {text}"))
    }

    /// Asks the kv service at `ip` (from the client namespace) to check
    /// every page it wrote; its answer.
    pub fn kv_verify(&self, ip: &str) -> String {
        let addr: SocketAddr = format!("{ip}:7000").parse().unwrap();
        let mut s = self.connect_from_client(addr).unwrap_or_else(|e| panic!("connect to the kv service at {addr}: {e}"));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        std::io::Write::write_all(&mut s, b"verify\n").unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).unwrap();
        line.trim().to_string()
    }

    /// Runs lpm and returns its stdout, failing the test with its stderr.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.lpm(args);
        assert!(out.status.success(), "lpm {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `lpm partition create NAME --host HOST [--memory M] --volume VOL -- ARGV`.
    pub fn create(&self, name: &str, host: &str, memory: Option<&str>, argv: &[String]) -> Result<(), String> {
        self.create_with(name, host, memory, &[], argv)
    }

    /// [`TestLab::create`] with more options of `lpm partition create`
    /// (`extra`, before the command).
    pub fn create_with(&self, name: &str, host: &str, memory: Option<&str>, extra: &[&str], argv: &[String]) -> Result<(), String> {
        let vol = self.vol.to_string_lossy().into_owned();
        let mut args = vec!["partition", "create", name, "--host", host, "--volume", &vol];
        if let Some(m) = memory {
            args.extend(["--memory", m]);
        }
        args.extend(extra);
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

    /// The last `lines` lines of a host's agent log.
    pub fn lpmd_log_tail(&self, host: &str, lines: usize) -> String {
        // Plain text: lpmd writes colour only to a terminal.
        let text = std::fs::read_to_string(self.dir.join(host).join("lpmd.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
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
