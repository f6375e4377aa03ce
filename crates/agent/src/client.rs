//! The CLI's side of the control API: the local control socket, or the
//! remote API over mutual TLS (docs/api.md).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use lpm_wire::{Key, Role};

use crate::api::{self, Progress, Request, Response};

/// A connection to one host's lpmd: authenticated on the control socket,
/// or the way to reach its remote API (a connection per request).
pub struct Client {
    conn: Conn,
    host: String,
}

enum Conn {
    Unix(UnixStream),
    Remote(Remote),
}

/// The operator's TLS configuration, shared by every host's client.
pub type TlsConfig = Arc<rustls::ClientConfig>;

/// Where a host's remote API is and how to reach it.
#[derive(Clone)]
pub struct Remote {
    /// Its address (api_listen).
    pub addr: SocketAddr,
    /// The network namespace to connect from (a lab's), by name under
    /// /run/netns.
    pub netns: Option<String>,
    /// The operator's TLS configuration ([`operator_tls`]).
    pub tls: TlsConfig,
}

/// Time a connection to a host's API may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the TLS handshake with a host's API may take (lpmd's own deadline
/// is 10 s, under load a little more is lost in transit).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(20);
/// Time lpmd may take to answer a request other than a migration: a guard
/// against a host that hangs, far above any request's time.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(300);

/// The operator's TLS configuration from its files (the site CA, the
/// certificate from `lpm pki operator`, its key).
pub fn operator_tls(ca: &Path, cert: &Path, key: &Path) -> Result<TlsConfig> {
    let issued = lpm_trust::Issued { cert: cert.to_path_buf(), key: key.to_path_buf() };
    let id = lpm_trust::Identity::load(ca, &issued).context("load the operator's identity")?;
    Ok(lpm_trust::client_config(&id)?)
}

/// Reads a key file (hex of 32 bytes, as `lpm lab up` writes it).
pub fn read_key(path: &Path) -> Result<Key> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read key file {}", path.display()))?;
    parse_key(text.trim()).with_context(|| format!("key file {}", path.display()))
}

/// Parses 64 hex digits into a key.
pub fn parse_key(hex: &str) -> Result<Key> {
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("a key is 64 hex digits, got {} characters", hex.len());
    }
    let mut k = [0u8; 32];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(Key::new(k))
}

impl Client {
    /// Connects to the control socket of `host` and runs the handshake.
    pub fn connect(host: &str, socket: &Path, key: &Key) -> Result<Client> {
        let mut stream = UnixStream::connect(socket).with_context(|| format!("connect to lpmd of {host} at {}", socket.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(30))).context("set timeout")?;
        lpm_wire::handshake(&mut stream, Role::Opener, key, "lpm-cli").with_context(|| format!("authenticate with lpmd of {host}"))?;
        stream.set_read_timeout(None).context("clear timeout")?;
        Ok(Client { conn: Conn::Unix(stream), host: host.to_string() })
    }

    /// A client of `host`'s remote API; each request opens a connection
    /// of its own.
    pub fn remote(host: &str, remote: Remote) -> Client {
        Client { conn: Conn::Remote(remote), host: host.to_string() }
    }

    /// Sends a request and returns the single answer; a `Response::Error`
    /// becomes an error naming the host.
    pub fn call(&mut self, req: &Request) -> Result<Response> {
        self.call_with_progress(req, |_| {})
    }

    /// Like `call`, passing `Progress` messages to `on_progress` until the
    /// final answer.
    pub fn call_with_progress(&mut self, req: &Request, mut on_progress: impl FnMut(&Progress)) -> Result<Response> {
        let stream = match &mut self.conn {
            Conn::Unix(s) => s,
            Conn::Remote(r) => return remote_call(&self.host, r, req, &mut on_progress),
        };
        api::send(stream, req).with_context(|| format!("send request to {}", self.host))?;
        loop {
            let r: Response = api::recv(stream, "response").with_context(|| format!("answer from {}", self.host))?;
            match r {
                Response::Progress(p) => on_progress(&p),
                Response::Error(e) => bail!("{}: {e}", self.host),
                other => return Ok(other),
            }
        }
    }
}

/// Opens a TCP connection to `addr`, from network namespace `netns` when
/// given (the socket stays in the namespace it was made in).
fn connect_tcp(addr: SocketAddr, netns: Option<&str>) -> Result<TcpStream> {
    match netns {
        None => TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).with_context(|| format!("connect to {addr}")),
        Some(ns) => {
            let path = Path::new("/run/netns").join(ns);
            let f = std::fs::File::open(&path).with_context(|| format!("open network namespace {}", path.display()))?;
            lpm_sys::net::in_netns(f.as_fd(), || TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT))
                .with_context(|| format!("enter network namespace {ns}"))?
                .with_context(|| format!("connect to {addr} from network namespace {ns}"))
        }
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects to `host`'s API and completes the TLS handshake: the server
/// must prove it is `host` of the site CA.
fn open_tls(host: &str, r: &Remote) -> Result<Tls> {
    let mut tcp = connect_tcp(r.addr, r.netns.as_deref())?;
    tcp.set_nodelay(true).ok();
    let name = lpm_trust::host_server_name(host)?;
    let mut conn = rustls::ClientConnection::new(r.tls.clone(), name).context("TLS client")?;
    tcp.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).context("set timeout")?;
    tcp.set_write_timeout(Some(HANDSHAKE_TIMEOUT)).context("set timeout")?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).with_context(|| format!("TLS handshake with {} at {}", host, r.addr))?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// One request on a connection of its own: HTTP/1.1 written by hand
/// (a request line, four headers and a body; the answer's head, then
/// its body by Content-Length or chunks). The HTTP crates want to
/// resolve and connect by themselves, where lpm connects from a lab's
/// namespace and checks the host's certificate name rather than the
/// address; this is the little of HTTP that lpm's API uses.
fn remote_call(host: &str, r: &Remote, req: &Request, on_progress: &mut dyn FnMut(&Progress)) -> Result<Response> {
    let route = req.route();
    let mut s = open_tls(host, r).with_context(|| format!("reach the API of {host}"))?;
    let migrating = matches!(req, Request::Migrate(_));
    // A migration answers as it goes, for as long as it runs: lpmd bounds
    // it (its time limit, its mover timeouts); other answers come soon.
    let t = if migrating { None } else { Some(ANSWER_TIMEOUT) };
    s.sock.set_read_timeout(t).context("set timeout")?;
    s.sock.set_write_timeout(Some(ANSWER_TIMEOUT)).context("set timeout")?;
    let body = route.body.unwrap_or_default();
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        route.method,
        route.path,
        body.len()
    );
    let what = || format!("{} {} on {host}", route.method, route.path);
    s.write_all(head.as_bytes()).and_then(|_| s.write_all(&body)).and_then(|_| s.flush()).with_context(|| format!("send {}", what()))?;
    let mut rd = BufReader::new(s);
    let (status, chunked, length) = read_head(&mut rd).with_context(|| format!("answer to {}", what()))?;
    let body = Body { r: rd, chunked, left: length, done: false };
    if !(200..300).contains(&status) && status != 409 {
        let mut text = String::new();
        let _ = body.take(4096).read_to_string(&mut text);
        bail!("{host}: {} answered HTTP {status}: {}", what(), text.trim());
    }
    let mut lines = BufReader::new(body);
    loop {
        let mut l = String::new();
        let n = lines.read_line(&mut l).with_context(|| format!("answer to {}", what()))?;
        if n == 0 {
            bail!("{host}: the answer to {} ended without a result", what());
        }
        if l.trim().is_empty() {
            continue;
        }
        let res: Response = api::decode(l.as_bytes(), "response").with_context(|| format!("answer to {}", what()))?;
        match res {
            Response::Progress(p) => on_progress(&p),
            Response::Error(e) => bail!("{host}: {e}"),
            other => return Ok(other),
        }
    }
}

/// `GET path` on `host`'s API, for what answers in text rather than a
/// [`Response`] (the metrics page): its status and body.
pub fn get_text(host: &str, r: &Remote, path: &str) -> Result<(u16, String)> {
    let mut s = open_tls(host, r).with_context(|| format!("reach the API of {host}"))?;
    s.sock.set_read_timeout(Some(ANSWER_TIMEOUT)).context("set timeout")?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).and_then(|_| s.flush()).with_context(|| format!("send GET {path} to {host}"))?;
    let mut rd = BufReader::new(s);
    let (status, chunked, length) = read_head(&mut rd).with_context(|| format!("answer to GET {path} on {host}"))?;
    let mut text = String::new();
    Body { r: rd, chunked, left: length, done: false }
        .read_to_string(&mut text)
        .with_context(|| format!("answer to GET {path} on {host}"))?;
    Ok((status, text))
}

/// Reads an answer's head: its status, whether its body is chunked, and
/// its Content-Length.
fn read_head(r: &mut impl BufRead) -> Result<(u16, bool, Option<u64>)> {
    let mut line = String::new();
    r.read_line(&mut line).context("read the status line")?;
    let mut parts = line.split_whitespace();
    let status = match (parts.next(), parts.next().and_then(|c| c.parse::<u16>().ok())) {
        (Some(v), Some(c)) if v.starts_with("HTTP/1.") => c,
        _ => bail!("not an HTTP answer: {:?}", line.chars().take(80).collect::<String>()),
    };
    let (mut chunked, mut length) = (false, None);
    for _ in 0..100 {
        line.clear();
        if r.read_line(&mut line).context("read a header")? == 0 {
            bail!("the answer's head ended early");
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, chunked, length));
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = Some(v.parse().map_err(|_| anyhow!("bad Content-Length {v:?}"))?);
            }
        }
    }
    bail!("more than 100 header lines")
}

/// An answer's body: chunked, of a known length, or to the end.
struct Body<R: BufRead> {
    r: R,
    chunked: bool,
    /// Bytes left: of the body when not chunked, of the chunk when it is.
    left: Option<u64>,
    done: bool,
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done || buf.is_empty() {
            return Ok(0);
        }
        if self.chunked && self.left.unwrap_or(0) == 0 {
            if self.left.is_some() {
                // The CRLF after the chunk just read.
                let mut crlf = String::new();
                self.r.read_line(&mut crlf)?;
            }
            let mut size = String::new();
            self.r.read_line(&mut size)?;
            let hex = size.trim().split(';').next().unwrap_or("");
            let n = u64::from_str_radix(hex, 16)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("bad chunk size {size:?}")))?;
            if n == 0 {
                self.done = true;
                return Ok(0);
            }
            self.left = Some(n);
        }
        let want = match self.left {
            Some(left) => buf.len().min(left as usize),
            None => buf.len(),
        };
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            if self.left.is_some_and(|l| l > 0) {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the answer ended early"));
            }
            self.done = true;
        }
        if let Some(l) = &mut self.left {
            *l -= n as u64;
            if *l == 0 && !self.chunked {
                self.done = true;
            }
        }
        Ok(n)
    }
}
