//! The CLI's list of hosts (`hosts.toml`): where each host's lpmd serves
//! its remote control API, and which operator identity the CLI presents
//! there. `lpm host add/list/remove` edit it; `lpm lab up` writes one for
//! its hosts in the lab directory, so the CLI reaches a lab's hosts the
//! way it reaches real servers.
//!
//! ```toml
//! [operator]                       # the CLI's certificate (lpm pki operator)
//! ca = "/etc/lpm/pki/ca.crt"
//! cert = "/etc/lpm/pki/operators/ann.crt"
//! key = "/etc/lpm/pki/operators/ann.key"
//!
//! [hosts.h1]
//! api = "192.0.2.11:7412"          # lpmd's api_listen
//! mover = "192.0.2.11:7411"        # lpmd's listen (default: api's address, port 7411)
//! ```
//!
//! A lab's file also has `netns = "lpm-ID-fabric"`: the CLI connects from
//! that network namespace, where the lab's management network is (the
//! machine's own namespace has no address on it).
//!
//! Where the CLI looks, first found wins: `LPM_CONFIG` (or `--config` on
//! `lpm host ...`), the lab's file when a lab is up (`LPM_LAB`),
//! `~/.config/lpm/hosts.toml`, `/etc/lpm/hosts.toml`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The system-wide hosts file.
pub const SYSTEM_PATH: &str = "/etc/lpm/hosts.toml";
/// The port of lpmd's control API unless told otherwise.
pub const API_PORT: u16 = 7412;
/// The port of lpmd's mover unless told otherwise.
pub const MOVER_PORT: u16 = 7411;
/// The file name in a lab's directory.
pub const LAB_FILE: &str = "hosts.toml";

/// The operator identity the CLI presents to every host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operator {
    /// The site CA's certificate.
    pub ca: PathBuf,
    /// The operator's certificate (`lpm pki operator NAME`).
    pub cert: PathBuf,
    /// Its private key (0600).
    pub key: PathBuf,
}

/// One host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostEntry {
    /// Where its lpmd serves the control API (`api_listen`).
    pub api: SocketAddr,
    /// Where its mover listens (`listen`), which a migration to it uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mover: Option<SocketAddr>,
}

impl HostEntry {
    /// The mover's address: the one given, or the API's address at
    /// [`MOVER_PORT`].
    pub fn mover(&self) -> SocketAddr {
        self.mover.unwrap_or_else(|| SocketAddr::new(self.api.ip(), MOVER_PORT))
    }
}

/// The console the CLI goes through, when one is configured (`lpm console
/// use ADDR`, or a lab with a console): the cluster commands then ask it
/// rather than each host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleEntry {
    /// Where the console listens.
    pub addr: SocketAddr,
    /// Its name: its certificate is for NAME.consoles.lpm.
    #[serde(default = "console_name")]
    pub name: String,
    /// A bearer token (`lpm console token add`); without one the CLI
    /// presents the operator's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

fn console_name() -> String {
    "console".into()
}

/// `hosts.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostsFile {
    /// The network namespace the CLI connects from (a lab's fabric).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// The operator identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<Operator>,
    /// The console to go through, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleEntry>,
    /// The hosts by name.
    #[serde(default)]
    pub hosts: BTreeMap<String, HostEntry>,
}

/// A hosts file that could not be read, written or changed.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    /// Reading or writing failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a hosts file (the parser names the key and line).
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An address that names no socket address.
    #[error("host {name}: {addr:?} is not an address (want IP:PORT, HOST:PORT or an IP, port {API_PORT} then): {why}")]
    BadAddress {
        /// The host.
        name: String,
        /// As given.
        addr: String,
        /// Why.
        why: String,
    },
    /// A name no host has.
    #[error("no host {name:?} in {path} (hosts: {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The file.
        path: PathBuf,
        /// The names there are.
        known: String,
    },
    /// A name that cannot be a host's.
    #[error("{0}")]
    BadName(#[from] lpm_trust::TrustError),
}

/// Parses `IP:PORT`, `HOST:PORT` or a bare IP (then [`API_PORT`]).
pub fn parse_addr(name: &str, addr: &str) -> Result<SocketAddr, HostsError> {
    let bad = |why: String| HostsError::BadAddress { name: name.to_string(), addr: addr.to_string(), why };
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, API_PORT));
    }
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if !addr.contains(':') {
        return Err(bad("no port".into()));
    }
    let mut resolved = addr.to_socket_addrs().map_err(|e| bad(e.to_string()))?;
    resolved.next().ok_or_else(|| bad("the name resolves to no address".into()))
}

impl HostsFile {
    /// Reads the file at `path`; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<HostsFile, HostsError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HostsFile::default()),
            Err(source) => return Err(HostsError::Io { op: "read", path: path.to_path_buf(), source }),
        };
        toml::from_str(&text).map_err(|e| HostsError::Invalid { path: path.to_path_buf(), reason: e.to_string() })
    }

    /// Writes the file (0600: it names the operator's key), its directory
    /// created when missing, through a temporary file renamed into place.
    pub fn save(&self, path: &Path) -> Result<(), HostsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let io = |op, p: &Path| {
            let p = p.to_path_buf();
            move |source| HostsError::Io { op, path: p, source }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        }
        let text = toml::to_string(self).map_err(|e| HostsError::Invalid { path: path.to_path_buf(), reason: e.to_string() })?;
        let tmp = path.with_extension("toml.tmp");
        let mut f =
            std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp).map_err(io("create", &tmp))?;
        f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("rename into", path))
    }

    /// Adds (or replaces) host `name` at `api`.
    pub fn add(&mut self, name: &str, api: SocketAddr, mover: Option<SocketAddr>) -> Result<(), HostsError> {
        lpm_trust::check_name(name)?;
        self.hosts.insert(name.to_string(), HostEntry { api, mover });
        Ok(())
    }

    /// Removes host `name`; `path` names the file in the error.
    pub fn remove(&mut self, name: &str, path: &Path) -> Result<HostEntry, HostsError> {
        self.hosts.remove(name).ok_or_else(|| self.unknown(name, path))
    }

    /// Host `name`; `path` names the file in the error.
    pub fn get(&self, name: &str, path: &Path) -> Result<&HostEntry, HostsError> {
        self.hosts.get(name).ok_or_else(|| self.unknown(name, path))
    }

    fn unknown(&self, name: &str, path: &Path) -> HostsError {
        let known = if self.hosts.is_empty() { "none".to_string() } else { self.hosts.keys().cloned().collect::<Vec<_>>().join(", ") };
        HostsError::Unknown { name: name.to_string(), path: path.to_path_buf(), known }
    }
}

/// The user's own hosts file, `~/.config/lpm/hosts.toml`
/// (`$XDG_CONFIG_HOME/lpm/hosts.toml` when that is set).
pub fn user_path() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
        return Some(PathBuf::from(x).join("lpm/hosts.toml"));
    }
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(|h| PathBuf::from(h).join(".config/lpm/hosts.toml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_round_trips_and_names_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("lpm-hosts-{}", std::process::id()));
        let path = dir.join("hosts.toml");
        let mut f = HostsFile::load(&path).unwrap();
        assert!(f.hosts.is_empty());
        f.add("h1", parse_addr("h1", "192.0.2.11").unwrap(), None).unwrap();
        f.add("h2", parse_addr("h2", "192.0.2.12:9000").unwrap(), Some("192.0.2.12:9001".parse().unwrap())).unwrap();
        f.operator = Some(Operator { ca: "/a/ca.crt".into(), cert: "/a/o.crt".into(), key: "/a/o.key".into() });
        f.save(&path).unwrap();
        use std::os::unix::fs::MetadataExt;
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        let g = HostsFile::load(&path).unwrap();
        assert_eq!(g, f);
        assert_eq!(g.hosts["h1"].api, "192.0.2.11:7412".parse().unwrap());
        assert_eq!(g.hosts["h1"].mover(), "192.0.2.11:7411".parse().unwrap());
        assert_eq!(g.hosts["h2"].mover(), "192.0.2.12:9001".parse().unwrap());
        let e = g.get("h3", &path).unwrap_err().to_string();
        assert!(e.contains("h3") && e.contains("h1, h2"), "{e}");
        std::fs::write(&path, "[hosts.h1]\napi = \"1.2.3.4:1\"\nport = 3\n").unwrap();
        let e = HostsFile::load(&path).unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        for bad in ["", "1.2.3", "nohost", "1.2.3.4:99999"] {
            assert!(parse_addr("h", bad).is_err(), "{bad}");
        }
        assert!(f.add("h.1", "1.2.3.4:1".parse().unwrap(), None).is_err());
    }
}
