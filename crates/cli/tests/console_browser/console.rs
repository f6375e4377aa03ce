//! A console for the tests, in a lab: `lpm console serve` in the lab's
//! fabric namespace (where the hosts' API addresses are reachable), with
//! its own certificate, database and token, and a way to call its API.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lpm_console::service::config::TlsFiles;
use lpm_console::service::Config;
use serde_json::Value;

use crate::common::lab::TestLab;
use crate::common::LPM;

/// The console's name in the lab (its certificate's).
pub const CONSOLE: &str = "webconsole";
/// Where it listens, in the lab's fabric namespace (where the hosts'
/// API addresses are reachable, and the browser runs).
pub const LISTEN: &str = "127.0.0.1:7420";

/// `lpm console serve` in the lab's fabric namespace, with its own
/// certificate, database and token; stopped when dropped.
pub struct Console {
    child: Option<Child>,
    config: PathBuf,
    fabric: String,
    log: PathBuf,
    /// An operator's token (`lpm console token add browser`).
    pub token: String,
}

impl Console {
    /// Issues the console's certificate in the lab's PKI, writes its
    /// configuration (`database`: a URL, or None for SQLite in its state
    /// directory), makes a token and starts it.
    pub fn start(lab: &TestLab, database: Option<String>) -> Console {
        let l = lab.lab();
        let pki = l.pki().expect("the lab's PKI");
        let out = Command::new(LPM).args(["pki", "console", CONSOLE, "--dir"]).arg(lab.dir.join("pki")).output().expect("lpm pki console");
        assert!(out.status.success(), "lpm pki console: {}", String::from_utf8_lossy(&out.stderr));
        let issued = pki.paths(lpm_trust::Role::Console, CONSOLE);
        let mut config = Config::new(TlsFiles { ca: pki.ca_cert(), cert: issued.cert, key: issued.key });
        config.name = CONSOLE.into();
        config.listen = LISTEN.parse().unwrap();
        config.state_dir = lab.root.join("console");
        config.database = database;
        config.poll_interval_ms = 500;
        std::fs::create_dir_all(&config.state_dir).unwrap();
        let path = lab.root.join("console.toml");
        config.save(&path).expect("write console.toml");
        let out =
            Command::new(LPM).args(["console", "token", "add", "browser", "--config"]).arg(&path).output().expect("lpm console token add");
        assert!(out.status.success(), "lpm console token add: {}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(token.starts_with("lpm_"), "token: {token:?}");
        // The browser talks to its driver and the console on loopback.
        let st = Command::new("ip").args(["-n", l.fabric(), "link", "set", "lo", "up"]).status().expect("ip link set lo up");
        assert!(st.success(), "loopback up in {}", l.fabric());
        let mut c = Console { child: None, config: path, fabric: l.fabric().to_string(), log: lab.root.join("console.log"), token };
        c.serve();
        c
    }

    /// Starts `lpm console serve` and waits until it listens.
    pub fn serve(&mut self) {
        assert!(self.child.is_none(), "the console runs already");
        let _ = std::fs::remove_file(&self.log);
        let child = Command::new("ip")
            .args(["netns", "exec", &self.fabric, LPM, "console", "serve", "--config"])
            .arg(&self.config)
            .env("LPM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .expect("lpm console serve");
        self.child = Some(child);
        self.wait_log("console listening", Duration::from_secs(60));
    }

    /// Stops it (SIGTERM, as a service manager would) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
        }
    }

    /// Waits until the console's log holds `what`.
    pub fn wait_log(&self, what: &str, deadline: Duration) {
        let end = Instant::now() + deadline;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(what) {
                return;
            }
            assert!(Instant::now() < end, "the console did not log {what:?} within {deadline:?}:\n{text}");
            // The log is a file another process writes: there is nothing
            // to wait on but its growth.
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// One API call with the token, by curl in the fabric namespace (the
    /// console's name mapped to its address, its certificate checked
    /// against the site CA): the status and the body as JSON (or text).
    #[allow(dead_code)]
    pub fn api(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.api_as(Some(&self.token), method, path, body)
    }

    /// [`Console::api`] with this token, or none.
    #[allow(dead_code)]
    pub fn api_as(&self, token: Option<&str>, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let ca = Config::load(&self.config).expect("console.toml").tls.ca;
        let port = LISTEN.rsplit(':').next().unwrap();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.fabric, "curl", "-sS", "--max-time", "60", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("{CONSOLE}.consoles.lpm:{port}:127.0.0.1"), "-X", method])
            .args(["-w", "\n%{http_code}"]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if let Some(b) = body {
            c.args(["-H", "Content-Type: application/json", "--data-binary", &b.to_string()]);
        }
        let out = c.arg(format!("https://{CONSOLE}.consoles.lpm:{port}{path}")).output().expect("run curl");
        assert!(out.status.success(), "curl {method} {path}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = code.trim().parse().unwrap_or_else(|_| panic!("curl {method} {path}: no status in {text:?}"));
        (status, serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_string())))
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Opens connections from the lab's fabric namespace (where a browser's
/// driver listens), on a thread that enters it: sockets keep the
/// namespace they were made in.
#[allow(dead_code)]
pub fn connector(netns: &str) -> Box<dyn Fn(SocketAddr) -> std::io::Result<TcpStream>> {
    let ns = PathBuf::from("/run/netns").join(netns);
    Box::new(move |addr: SocketAddr| {
        let f = std::fs::File::open(&ns)?;
        std::thread::spawn(move || -> std::io::Result<TcpStream> {
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
            TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        })
        .join()
        .map_err(|_| std::io::Error::other("the connecting thread panicked"))?
    })
}
