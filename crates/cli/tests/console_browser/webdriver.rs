//! Headless Chromium driven through Debian's ChromeDriver, by the W3C
//! WebDriver protocol spoken here over plain HTTP/1.1 on loopback.
//!
//! Why this and not a client crate or Playwright: ChromeDriver comes from
//! the same Debian release as Chromium (packages chromium and
//! chromium-driver, installed by scripts/setup.sh), so the two always
//! match and nothing is downloaded at test time; the protocol is a handful
//! of JSON calls, which a hundred lines over `TcpStream` speak with the
//! crates the tests already have (no async HTTP client such as fantoccini
//! brings, no Node.js and npm for playwright-core). Everything runs as root
//! in CI: Chromium gets `--no-sandbox`.
//!
//! The driver and the browser may run in a network namespace (the lab's
//! client side, where the console's address is reachable): the driver is
//! started under `ip netns exec` and the test's connections to it are
//! opened by a connector that the caller gives, from that namespace.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Opens a TCP connection to the driver, from the driver's namespace.
pub type Connector = Box<dyn Fn(SocketAddr) -> std::io::Result<TcpStream>>;

/// The W3C name of an element reference in JSON.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A Chromium session; the browser and its driver end when it drops.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    connect: Connector,
}

impl Browser {
    /// Starts ChromeDriver (in `netns` if given) and a headless Chromium
    /// session with a fresh profile under `dir`.
    /// `resolve` are Chromium host resolver rules (`MAP NAME ADDRESS`), so
    /// a server is reached by the name its certificate carries; `ca` is a
    /// CA certificate (PEM) the browser trusts, alone.
    pub fn start(dir: &Path, netns: Option<&str>, connect: Connector, resolve: &[&str], ca: &Path) -> Result<Browser, String> {
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).map_err(|e| format!("create {}: {e}", profile.display()))?;
        // Chromium on Linux trusts the NSS database in $HOME/.pki/nssdb:
        // a fresh HOME with only the site CA in it, so the console's
        // certificate is checked as a browser would check it.
        let home = dir.join("browser-home");
        let nssdb = home.join(".pki/nssdb");
        std::fs::create_dir_all(&nssdb).map_err(|e| format!("create {}: {e}", nssdb.display()))?;
        let db = format!("sql:{}", nssdb.display());
        for args in [
            vec!["-N", "-d", &db, "--empty-password"],
            vec!["-A", "-d", &db, "-n", "lpm-site-ca", "-t", "C,,", "-i", ca.to_str().ok_or("CA path")?],
        ] {
            let out = Command::new("certutil")
                .args(&args)
                .output()
                .map_err(|e| format!("run certutil (scripts/setup.sh installs libnss3-tools): {e}"))?;
            if !out.status.success() {
                return Err(format!("certutil {args:?}: {}", String::from_utf8_lossy(&out.stderr)));
            }
        }
        let log = dir.join("chromedriver.log");
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "chromedriver"]);
                c
            }
            None => Command::new("chromedriver"),
        };
        cmd.arg("--port=0").arg(format!("--log-path={}", log.display())).env("HOME", &home);
        let mut driver = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start chromedriver: {e} (scripts/setup.sh installs chromium-driver)"))?;
        // ChromeDriver picks a free port for --port=0 and says which on its
        // first lines; it reads no more from us, so its output is drained
        // by a thread to keep it from blocking on a full pipe.
        let out = driver.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(port) = line.split("started successfully on port ").nth(1) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(port.trim_end_matches('.').trim().parse::<u16>().ok());
                    }
                }
            }
        });
        let port = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(p)) => p,
            other => {
                let _ = driver.kill();
                let _ = driver.wait();
                return Err(format!("chromedriver did not say its port ({other:?}); log {}", log.display()));
            }
        };
        let mut b = Browser { driver, addr: SocketAddr::from(([127, 0, 0, 1], port)), session: String::new(), connect };
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,1000",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        if !resolve.is_empty() {
            args.push(format!("--host-resolver-rules={}", resolve.join(",")));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": false,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                // What the machine notes found needed on this closed
                // network: no background connections, no sandbox as root.
                "args": args
            }
        }}});
        let v = b.call("POST", "/session", Some(caps))?;
        b.session = v["sessionId"].as_str().ok_or_else(|| format!("no session id in {v}"))?.to_string();
        Ok(b)
    }

    /// One WebDriver command; its `value`, or the driver's error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = (self.connect)(self.addr).map_err(|e| format!("connect to chromedriver {}: {e}", self.addr))?;
        // Page loads and async scripts are bounded by the driver's own
        // timeouts; this one only catches a driver that stopped answering.
        s.set_read_timeout(Some(Duration::from_secs(120))).map_err(|e| e.to_string())?;
        let req = format!("{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", self.addr, body.len());
        s.write_all(req.as_bytes()).map_err(|e| format!("{method} {path}: {e}"))?;
        // ChromeDriver keeps the connection open after its answer even when
        // asked to close it: the answer ends where its length says.
        let mut raw = Vec::new();
        let mut buf = [0u8; 65536];
        let (status, body) = loop {
            if let Some(done) = complete_response(&raw).map_err(|e| format!("{method} {path}: {e}"))? {
                break done;
            }
            let n = s.read(&mut buf).map_err(|e| format!("{method} {path}: read: {e}"))?;
            if n == 0 {
                break parse_response(&raw).map_err(|e| format!("{method} {path}: {e}"))?;
            }
            raw.extend_from_slice(&buf[..n]);
        };
        let v: Value = serde_json::from_slice(&body).map_err(|e| format!("{method} {path}: {e}: {}", String::from_utf8_lossy(&body)))?;
        if status != 200 {
            return Err(format!("{method} {path}: {status}: {}", v["value"]));
        }
        Ok(v["value"].clone())
    }

    fn cmd(&self, method: &str, what: &str, body: Option<Value>) -> Result<Value, String> {
        self.call(method, &format!("/session/{}/{what}", self.session), body)
    }

    /// Opens a URL and waits for its load.
    pub fn goto(&self, url: &str) -> Result<(), String> {
        self.cmd("POST", "url", Some(json!({"url": url}))).map(|_| ())
    }

    /// The element the CSS selector finds first.
    pub fn find(&self, css: &str) -> Result<String, String> {
        let v = self.cmd("POST", "element", Some(json!({"using": "css selector", "value": css})))?;
        v[ELEMENT].as_str().map(str::to_string).ok_or_else(|| format!("no element for {css}: {v}"))
    }

    /// Clicks the element the selector finds, as a user would.
    pub fn click(&self, css: &str) -> Result<(), String> {
        let id = self.find(css)?;
        self.cmd("POST", &format!("element/{id}/click"), Some(json!({}))).map(|_| ())
    }

    /// Types text into the element the selector finds.
    pub fn type_into(&self, css: &str, text: &str) -> Result<(), String> {
        let id = self.find(css)?;
        self.cmd("POST", &format!("element/{id}/value"), Some(json!({"text": text}))).map(|_| ())
    }

    /// Runs a script in the page and returns what it returns.
    pub fn exec(&self, script: &str, args: Value) -> Result<Value, String> {
        self.cmd("POST", "execute/sync", Some(json!({"script": script, "args": args})))
    }

    /// Runs an asynchronous script (its last argument is the callback
    /// that ends it) and returns what it passed to the callback.
    pub fn exec_async(&self, script: &str, args: Value) -> Result<Value, String> {
        self.cmd("POST", "timeouts", Some(json!({"script": 60_000})))?;
        self.cmd("POST", "execute/async", Some(json!({"script": script, "args": args})))
    }

    /// Waits until `expr` (a JavaScript expression) is truthy in the page
    /// and returns its value. The page is watched, not polled blindly: each
    /// check runs after a DOM change (a MutationObserver), and a check at
    /// least every 500 ms catches changes the observer cannot see (a
    /// progress element's `value` property).
    pub fn wait_for(&self, what: &str, expr: &str, deadline: Duration) -> Result<Value, String> {
        let end = Instant::now() + deadline;
        self.cmd("POST", "timeouts", Some(json!({"script": 30_000})))?;
        let script = format!(
            "const done = arguments[arguments.length - 1];
             const check = () => {{ try {{ return ({expr}); }} catch (e) {{ return null; }} }};
             let v = check();
             if (v) return done(v);
             const stop = (r) => {{ obs.disconnect(); clearInterval(tick); clearTimeout(quit); done(r); }};
             const obs = new MutationObserver(() => {{ const v = check(); if (v) stop(v); }});
             obs.observe(document, {{subtree: true, childList: true, attributes: true, characterData: true}});
             const tick = setInterval(() => {{ const v = check(); if (v) stop(v); }}, 500);
             const quit = setTimeout(() => stop(null), 20000);"
        );
        loop {
            let v = self.cmd("POST", "execute/async", Some(json!({"script": script, "args": []})))?;
            if !(v.is_null() || v == json!(false)) {
                return Ok(v);
            }
            if Instant::now() >= end {
                // What the page showed instead: its address, title and text.
                let page = self
                    .exec("return [location.href, document.title, document.body ? document.body.innerText.slice(0, 400) : ''];", json!([]))
                    .unwrap_or_else(|e| json!(e));
                return Err(format!("timed out after {deadline:?} waiting for {what} ({expr}); the page: {page}"));
            }
        }
    }

    /// Saves a PNG screenshot of the page.
    pub fn screenshot(&self, path: &Path) -> Result<(), String> {
        let v = self.cmd("GET", "screenshot", None)?;
        let png = base64_decode(v.as_str().ok_or("screenshot is not a string")?)?;
        std::fs::write(path, png).map_err(|e| format!("write {}: {e}", path.display()))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Ends Chromium; the driver is killed either way.
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The status and body once `raw` holds a whole answer with a
/// Content-Length; None while it does not yet.
fn complete_response(raw: &[u8]) -> Result<Option<(u16, Vec<u8>)>, String> {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let Some(len) = head.lines().find_map(|l| l.strip_prefix("content-length:")).and_then(|v| v.trim().parse::<usize>().ok()) else {
        return Ok(None);
    };
    if raw.len() < split + 4 + len {
        return Ok(None);
    }
    parse_response(&raw[..split + 4 + len]).map(Some)
}

/// The status and body of an HTTP/1.1 answer read to its end (identity or
/// chunked).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or("no end of the answer's head")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line in {head:?}"))?;
    let mut body = raw[split + 4..].to_vec();
    if head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked")) {
        let mut out = Vec::new();
        let mut rest = &body[..];
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").ok_or("bad chunk")?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).split(';').next().unwrap_or("").trim(), 16)
                .map_err(|e| format!("bad chunk size: {e}"))?;
            rest = &rest[eol + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size).ok_or("short chunk")?);
            rest = rest.get(size + 2..).ok_or("short chunk")?;
        }
        body = out;
    }
    Ok((status, body))
}

/// Standard base64 (the screenshot's encoding).
fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' => continue,
            _ => return Err(format!("bad base64 byte {c}")),
        };
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Ok(out)
}
