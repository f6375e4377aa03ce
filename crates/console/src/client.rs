//! The CLI's client of the console's API (blocking): one TLS connection
//! per request, from a network namespace when given (a lab's fabric), the
//! console's certificate checked against the site CA and its name, the
//! operator authenticated by its certificate or a bearer token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Time a connection to the console may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the console may take to answer: a validation asks both hosts, a
/// migration's start waits for a free slot.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(900);

/// How to reach a console and who to be there.
#[derive(Clone)]
pub struct ConsoleClient {
    /// Its address.
    pub addr: SocketAddr,
    /// Its name (its certificate is for NAME.consoles.lpm).
    pub name: String,
    /// The network namespace to connect from, by name under /run/netns.
    pub netns: Option<String>,
    tls: Arc<rustls::ClientConfig>,
    token: Option<String>,
}

/// An answer that is not a success: its status and the console's
/// `error` text.
#[derive(Debug, thiserror::Error)]
#[error("console: {method} {path}: HTTP {status}: {message}")]
pub struct ConsoleError {
    /// The request's method.
    pub method: String,
    /// Its path.
    pub path: String,
    /// The status.
    pub status: u16,
    /// The console's `error`, or the body.
    pub message: String,
}

impl ConsoleClient {
    /// A client that presents the operator's certificate (`cert`, `key`
    /// of the site CA `ca`), or `token` instead when given.
    pub fn new(
        addr: SocketAddr,
        name: &str,
        netns: Option<String>,
        ca: &Path,
        cert: Option<(&Path, &Path)>,
        token: Option<String>,
    ) -> Result<ConsoleClient> {
        lpm_trust::check_name(name).with_context(|| format!("console name {name:?}"))?;
        let tls = match (&token, cert) {
            (None, Some((cert, key))) => {
                let issued = lpm_trust::Issued { cert: cert.to_path_buf(), key: key.to_path_buf() };
                let id = lpm_trust::Identity::load(ca, &issued).context("load the operator's identity")?;
                lpm_trust::client_config(&id)?
            }
            _ => lpm_trust::anonymous_client_config(ca)?,
        };
        Ok(ConsoleClient { addr, name: name.to_string(), netns, tls, token })
    }

    fn connect(&self) -> Result<TcpStream> {
        let addr = self.addr;
        match &self.netns {
            None => TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).with_context(|| format!("connect to the console at {addr}")),
            Some(ns) => {
                let path = Path::new("/run/netns").join(ns);
                let f = std::fs::File::open(&path).with_context(|| format!("open network namespace {}", path.display()))?;
                lpm_sys::net::in_netns(f.as_fd(), || TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT))
                    .with_context(|| format!("enter network namespace {ns}"))?
                    .with_context(|| format!("connect to the console at {addr} from network namespace {ns}"))
            }
        }
    }

    /// Sends one request; returns the status and the JSON body (Null when
    /// empty).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let what = || format!("{method} {path} on the console at {}", self.addr);
        let mut tcp = self.connect()?;
        tcp.set_nodelay(true).ok();
        tcp.set_read_timeout(Some(ANSWER_TIMEOUT)).context("set timeout")?;
        tcp.set_write_timeout(Some(ANSWER_TIMEOUT)).context("set timeout")?;
        let server = lpm_trust::console_server_name(&self.name)?;
        let mut conn = rustls::ClientConnection::new(self.tls.clone(), server).context("TLS client")?;
        while conn.is_handshaking() {
            conn.complete_io(&mut tcp).with_context(|| format!("TLS handshake with the console {} at {}", self.name, self.addr))?;
        }
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let body = body.map(|b| serde_json::to_vec(b).expect("JSON serializes")).unwrap_or_default();
        let auth = self.token.as_ref().map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.name,
            body.len()
        );
        s.write_all(head.as_bytes())
            .and_then(|_| s.write_all(&body))
            .and_then(|_| s.flush())
            .with_context(|| format!("send {}", what()))?;
        let mut rd = BufReader::new(s);
        let (status, chunked) = read_head(&mut rd).with_context(|| format!("answer to {}", what()))?;
        let mut raw = Vec::new();
        if chunked {
            read_chunked(&mut rd, &mut raw).with_context(|| format!("answer to {}", what()))?;
        } else {
            // Connection: close: the body runs to the end. A TLS peer
            // that closes without close_notify after a whole body is
            // taken as done.
            match rd.read_to_end(&mut raw) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
                Err(e) => return Err(e).with_context(|| format!("answer to {}", what())),
            }
        }
        let v = if raw.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            serde_json::from_slice(&raw).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()))
        };
        Ok((status, v))
    }

    /// A request whose answer must be a success, decoded as `T`.
    pub fn call<T: DeserializeOwned>(&self, method: &str, path: &str, body: Option<&Value>) -> Result<T> {
        let (status, v) = self.request(method, path, body)?;
        if !(200..300).contains(&status) {
            let message = v.get("error").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| v.to_string());
            return Err(ConsoleError { method: method.into(), path: path.into(), status, message }.into());
        }
        serde_json::from_value(v).with_context(|| format!("the console's answer to {method} {path}"))
    }
}

fn read_head(r: &mut impl BufRead) -> Result<(u16, bool)> {
    let mut line = String::new();
    r.read_line(&mut line).context("read the status line")?;
    let mut parts = line.split_whitespace();
    let status = match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(c)) if v.starts_with("HTTP/1.") => c,
        _ => bail!("not an HTTP answer: {:?}", line.chars().take(80).collect::<String>()),
    };
    let mut chunked = false;
    for _ in 0..100 {
        line.clear();
        if r.read_line(&mut line).context("read a header")? == 0 {
            bail!("the answer's head ended early");
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, chunked));
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    bail!("more than 100 header lines")
}

fn read_chunked(r: &mut impl BufRead, out: &mut Vec<u8>) -> Result<()> {
    loop {
        let mut size = String::new();
        r.read_line(&mut size).context("read a chunk's size")?;
        let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16).map_err(|_| anyhow!("bad chunk size {size:?}"))?;
        if n == 0 {
            return Ok(());
        }
        let start = out.len();
        out.resize(start + n, 0);
        r.read_exact(&mut out[start..]).context("read a chunk")?;
        let mut crlf = String::new();
        r.read_line(&mut crlf).context("read a chunk's end")?;
    }
}

/// A path segment percent-encoded.
pub fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}
