//! A minimal PostgreSQL client (protocol 3.0, simple queries, trust
//! authentication) for the tests that run a real server in a partition:
//! no client library is installed for Python, and a client of our own
//! tells exactly which statement was acknowledged and how long each took.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// One connection to a PostgreSQL server.
pub struct Pg {
    w: TcpStream,
    r: BufReader<TcpStream>,
}

/// A query's result rows, each column as text (None for NULL).
pub type Rows = Vec<Vec<Option<String>>>;

impl Pg {
    /// Connects as user and database `postgres` (the server must trust the
    /// client's address) and waits until the server is ready for queries.
    /// The calling thread's network namespace is the one connected from.
    pub fn connect(addr: SocketAddr, timeout: Duration) -> Result<Pg, String> {
        let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect to {addr}: {e}"))?;
        s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut pg = Pg { r: BufReader::new(s.try_clone().map_err(|e| e.to_string())?), w: s };
        let mut body = Vec::new();
        body.extend_from_slice(&196_608u32.to_be_bytes());
        for kv in ["user", "postgres", "database", "postgres"] {
            body.extend_from_slice(kv.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        pg.w.write_all(&msg).map_err(|e| format!("send the startup message: {e}"))?;
        loop {
            let (ty, body) = pg.read_msg().map_err(|e| format!("startup: {e}"))?;
            match ty {
                b'R' if body.get(..4) == Some(&[0, 0, 0, 0]) => {}
                b'R' => return Err(format!("the server asks for authentication {body:?} (trust expected)")),
                b'E' => return Err(format!("startup: {}", error_text(&body))),
                b'Z' => return Ok(pg),
                _ => {}
            }
        }
    }

    /// Runs one simple query; its rows, or the server's error (or the
    /// connection's).
    pub fn query(&mut self, sql: &str) -> Result<Rows, String> {
        let mut msg = vec![b'Q'];
        msg.extend_from_slice(&((sql.len() + 5) as u32).to_be_bytes());
        msg.extend_from_slice(sql.as_bytes());
        msg.push(0);
        self.w.write_all(&msg).map_err(|e| format!("send {sql:?}: {e}"))?;
        let mut rows = Vec::new();
        let mut err = None;
        loop {
            let (ty, body) = self.read_msg().map_err(|e| format!("answer to {sql:?}: {e}"))?;
            match ty {
                b'D' => rows.push(data_row(&body).ok_or_else(|| format!("a malformed row answering {sql:?}"))?),
                b'E' => err = Some(error_text(&body)),
                b'Z' => return err.map_or(Ok(rows), |e| Err(format!("{sql:?}: {e}"))),
                _ => {}
            }
        }
    }

    /// The single value of a one-row, one-column query.
    pub fn value(&mut self, sql: &str) -> Result<String, String> {
        let rows = self.query(sql)?;
        match rows.as_slice() {
            [row] if row.len() == 1 => row[0].clone().ok_or_else(|| format!("{sql:?} gave NULL")),
            _ => Err(format!("{sql:?} gave {rows:?}, expected one value")),
        }
    }

    /// The connection's socket (for TCP_INFO).
    pub fn socket(&self) -> &TcpStream {
        &self.w
    }

    /// Says goodbye (Terminate) and closes the connection.
    pub fn close(mut self) -> Result<(), String> {
        self.w.write_all(&[b'X', 0, 0, 0, 4]).map_err(|e| format!("send Terminate: {e}"))
    }

    fn read_msg(&mut self) -> std::io::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 5];
        self.r.read_exact(&mut head)?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0; len.saturating_sub(4)];
        self.r.read_exact(&mut body)?;
        Ok((head[0], body))
    }
}

/// The columns of a DataRow message.
fn data_row(b: &[u8]) -> Option<Vec<Option<String>>> {
    let n = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
    let mut at = 2;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            out.push(Some(String::from_utf8_lossy(b.get(at..at + len as usize)?).into_owned()));
            at += len as usize;
        }
    }
    Some(out)
}

/// The severity, code and message fields of an ErrorResponse.
fn error_text(b: &[u8]) -> String {
    let mut out = Vec::new();
    for f in b.split(|&c| c == 0).filter(|f| !f.is_empty()) {
        if matches!(f[0], b'S' | b'C' | b'M') {
            out.push(String::from_utf8_lossy(&f[1..]).into_owned());
        }
    }
    out.join(" ")
}
