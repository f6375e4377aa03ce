//! The CLI's side of the control API.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use lpm_wire::{Key, Role};

use crate::api::{self, Progress, Request, Response};

/// An authenticated connection to one host's lpmd.
pub struct Client {
    stream: UnixStream,
    host: String,
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
        Ok(Client { stream, host: host.to_string() })
    }

    /// Sends a request and returns the single answer; a `Response::Error`
    /// becomes an error naming the host.
    pub fn call(&mut self, req: &Request) -> Result<Response> {
        self.call_with_progress(req, |_| {})
    }

    /// Like `call`, passing `Progress` messages to `on_progress` until the
    /// final answer.
    pub fn call_with_progress(&mut self, req: &Request, mut on_progress: impl FnMut(&Progress)) -> Result<Response> {
        api::send(&mut self.stream, req).with_context(|| format!("send request to {}", self.host))?;
        loop {
            let r: Response = api::recv(&mut self.stream, "response").with_context(|| format!("answer from {}", self.host))?;
            match r {
                Response::Progress(p) => on_progress(&p),
                Response::Error(e) => bail!("{}: {e}", self.host),
                other => return Ok(other),
            }
        }
    }
}
