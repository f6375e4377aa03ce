//! The console's configuration (`console.toml`, `lpm console serve
//! --config`).
//!
//! ```toml
//! name = "console"                      # its certificate's (lpm pki console NAME)
//! listen = "0.0.0.0:7420"
//! state_dir = "/var/lib/lpm-console"    # the SQLite file's directory
//! database = "postgres://lpm@db/lpm"    # default: sqlite://STATE_DIR/console.db
//! poll_interval_ms = 5000
//! poll_timeout_ms = 4000                # one host's poll; the others go on
//! max_migrations = 4                    # under way at once, console-wide
//!
//! [hosts.h1]                            # registered at start unless already
//! api = "192.0.2.11:7412"
//! mover = "192.0.2.11:7411"
//!
//! [tls]                                 # served to operators, presented to hosts
//! ca = "/etc/lpm/pki/ca.crt"
//! cert = "/etc/lpm/pki/consoles/console.crt"
//! key = "/etc/lpm/pki/consoles/console.key"
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The port the console listens on unless told otherwise.
pub const PORT: u16 = 7420;
/// The state directory unless told otherwise.
pub const STATE_DIR: &str = "/var/lib/lpm-console";
/// The SQLite file's name in the state directory.
pub const DB_FILE: &str = "console.db";

/// The console's TLS files: the site CA, its certificate and key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The site CA's certificate.
    pub ca: PathBuf,
    /// The console's certificate (`lpm pki console NAME`).
    pub cert: PathBuf,
    /// Its private key (0600).
    pub key: PathBuf,
}

/// `console.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The console's name: its certificate is for NAME.consoles.lpm.
    #[serde(default = "default_name")]
    pub name: String,
    /// Where it serves operators.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Its state directory (the SQLite database by default).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// The database: `sqlite://PATH` or `postgres://...`; default the
    /// SQLite file in the state directory.
    #[serde(default)]
    pub database: Option<String>,
    /// The TLS files.
    pub tls: TlsFiles,
    /// Time between two polls of every host, ms.
    #[serde(default = "default_poll_interval")]
    pub poll_interval_ms: u64,
    /// Time one host's poll may take before it counts as unreachable, ms.
    #[serde(default = "default_poll_timeout")]
    pub poll_timeout_ms: u64,
    /// Migrations under way at once through this console.
    #[serde(default = "default_max_migrations")]
    pub max_migrations: usize,
    /// Hosts registered when the console starts, unless registered
    /// already (a lab's console knows the lab's hosts from the start).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, SeedHost>,
}

/// A host registered at start (`[hosts.NAME]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedHost {
    /// Its lpmd's api_listen.
    pub api: SocketAddr,
    /// Its lpmd's listen (default: the API's address, port 7411).
    #[serde(default)]
    pub mover: Option<SocketAddr>,
}

fn default_name() -> String {
    "console".into()
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], PORT))
}
fn default_state_dir() -> PathBuf {
    PathBuf::from(STATE_DIR)
}
fn default_poll_interval() -> u64 {
    5000
}
fn default_poll_timeout() -> u64 {
    4000
}
fn default_max_migrations() -> usize {
    4
}

impl Config {
    /// A configuration with the defaults and these TLS files.
    pub fn new(tls: TlsFiles) -> Config {
        Config {
            name: default_name(),
            listen: default_listen(),
            state_dir: default_state_dir(),
            database: None,
            tls,
            poll_interval_ms: default_poll_interval(),
            poll_timeout_ms: default_poll_timeout(),
            max_migrations: default_max_migrations(),
            hosts: BTreeMap::new(),
        }
    }

    /// Reads `path`.
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read console configuration {}", path.display()))?;
        let c: Config = toml::from_str(&text).with_context(|| format!("console configuration {}", path.display()))?;
        lpm_trust::check_name(&c.name).with_context(|| format!("console configuration {}: name", path.display()))?;
        Ok(c)
    }

    /// Writes it to `path` (`lpm lab up`).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).context("serialize the console configuration")?;
        std::fs::write(path, text).with_context(|| format!("write console configuration {}", path.display()))
    }

    /// The database's URL: the one given, or the SQLite file in the
    /// state directory (created when missing).
    pub fn database_url(&self) -> String {
        match &self.database {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.state_dir.join(DB_FILE).display()),
        }
    }
}
